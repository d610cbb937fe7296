"""The rank kernel's arrays (`_rankscorer.c`), built from a parsed LightGBM model.

The rank kernel is QuickScorer vectorized across 64 documents with rank-indexed thresholds and
byte-transposed leaf vectors; ranking/scoring/README.md ("The rank kernel") explains it. This
module turns the parsed trees into what the kernel reads:

- per feature, the sorted distinct thresholds (a document's rank for the feature is the number of
  them below its value; a node with threshold index j is false when rank > j);
- per tree, ceil(leaves / 8) byte vectors, and its leaf values in left-to-right bit order;
- tree blocks whose byte vectors fit in L1 (`block_bytes` for 64 documents);
- per (tree block, feature), the groups of nodes with equal thresholds, ascending, each with the
  (byte vector, bits to clear) records of its nodes' left subtrees;
- per (tree block, feature), the records applied per document for NaN and zero values that do
  not behave like a rank, and the categorical nodes with their bitsets.

Everything is vectorized with numpy, so 500 trees x 63 leaves build in tens of milliseconds.
The C constructor checks every offset and index again, so a bug here raises ValueError rather
than reading out of bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ranking.scoring import _rankscorer

if TYPE_CHECKING:
    from ranking.scoring.model_text import _Model

__all__ = ["BLOCK_BYTES", "LeafOrder", "build_rank"]

#: Byte vectors of one tree block for 64 documents: 32 KiB stays in a 48 KiB L1 beside the
#: node records streaming through it.
BLOCK_BYTES = 32 * 1024
_LANES = _rankscorer.LANES

_CATEGORICAL_MASK = 1
_DEFAULT_LEFT_MASK = 2
_MISSING_NONE, _MISSING_ZERO = 0, 1

#: Per tree, as quickscorer._leaf_order returns it: bit of each leaf, and the leaf-bit range
#: [lo, hi) of each internal node's left subtree.
LeafOrder = tuple[list[int], list[int], list[int]]

I64 = npt.NDArray[np.int64]


def _records(
    node_tree: I64, lo: I64, hi: I64, tree_vec: I64, block_base: I64
) -> tuple[I64, npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """One record per byte a node's left-subtree bit range [lo, hi) touches: (node, byte vector
    inside the node's tree block, bits of that byte to clear)."""
    first = lo // 8
    count = (hi - 1) // 8 - first + 1
    node = np.repeat(np.arange(len(lo), dtype=np.int64), count)
    start = np.repeat(np.cumsum(count) - count, count)
    byte = first[node] + (np.arange(len(node), dtype=np.int64) - start)
    a = np.clip(lo[node] - 8 * byte, 0, 8)
    z = np.clip(hi[node] - 8 * byte, 0, 8)
    clear = ((np.int64(1) << (z - a)) - 1) << a
    t = node_tree[node]
    vec = tree_vec[t] - block_base[t] + byte
    return node, vec.astype(np.uint32), clear.astype(np.uint8)


def _offsets(segment: I64, count: int) -> I64:
    off = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(segment, minlength=count), out=off[1:])
    return off


def build_rank(
    model: _Model, orders: Sequence[LeafOrder], block_bytes: int = BLOCK_BYTES
) -> tuple[_rankscorer.RankEnsemble | None, str]:
    """The rank kernel's ensemble, or (None, why not). `orders` is `_leaf_order` of every tree;
    the model must already have passed QuickScorer's build (feature indices, bitsets, missing
    types checked there)."""
    nf = model.num_features
    trees = model.trees
    num_trees = len(trees)
    nbytes = np.array([(tree.num_leaves + 7) // 8 for tree in trees], dtype=np.int64)
    tree_vec = np.zeros(num_trees + 1, dtype=np.int64)
    np.cumsum(nbytes, out=tree_vec[1:])

    # Tree blocks, greedily in model order, each within block_bytes for 64 documents.
    limit = max(1, block_bytes // _LANES)
    starts = [0]
    used = 0
    for t in range(num_trees):
        if used and used + int(nbytes[t]) > limit:
            starts.append(t)
            used = 0
        used += int(nbytes[t])
    block_tree = np.array([*starts, num_trees], dtype=np.int64)
    num_blocks = len(starts)
    block_of_tree = np.repeat(np.arange(num_blocks, dtype=np.int64), np.diff(block_tree))
    block_base = tree_vec[block_tree[:-1]][block_of_tree]

    leaf_value = np.zeros(int(tree_vec[-1]) * 8, dtype=np.float64)
    num: list[tuple[int, int, float, int, int, int]] = []  # tree, feature, thr, dt, lo, hi
    cat: list[tuple[int, int, int, int, list[int]]] = []  # tree, feature, lo, hi, bitset
    for t, (tree, (bit_of_leaf, left_lo, left_hi)) in enumerate(zip(trees, orders, strict=True)):
        base = int(tree_vec[t]) * 8
        leaf_value[base + np.asarray(bit_of_leaf, dtype=np.int64)] = tree.leaf_value
        for n in range(tree.num_leaves - 1):
            f = tree.split_feature[n]
            dt = tree.decision_type[n]
            if dt & _CATEGORICAL_MASK:
                idx = int(tree.threshold[n])
                a, z = tree.cat_boundaries[idx], tree.cat_boundaries[idx + 1]
                cat.append((t, f, left_lo[n], left_hi[n], tree.cat_threshold[a:z]))
            else:
                num.append((t, f, tree.threshold[n], dt, left_lo[n], left_hi[n]))

    nseg = num_blocks * nf
    n_tree = np.array([r[0] for r in num], dtype=np.int64)
    n_feat = np.array([r[1] for r in num], dtype=np.int64)
    n_thr = np.array([r[2] for r in num], dtype=np.float64)
    n_dt = np.array([r[3] for r in num], dtype=np.int64)
    n_lo = np.array([r[4] for r in num], dtype=np.int64)
    n_hi = np.array([r[5] for r in num], dtype=np.int64)

    # Distinct thresholds per feature (-0.0 and 0.0 are one: `t < x` cannot tell them apart),
    # and each node's index j among them.
    order = np.lexsort((n_thr, n_feat))
    fs, ts = n_feat[order], n_thr[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (fs[1:] != fs[:-1]) | (ts[1:] != ts[:-1])
    distinct = np.cumsum(new) - 1
    thr_off = _offsets(fs[new], nf)
    counts = np.diff(thr_off)
    if counts.size and int(counts.max()) > _rankscorer.MAX_RANKS:
        f = int(np.argmax(counts))
        return None, (
            f"feature {f} has {int(counts[f])} distinct thresholds; the rank kernel takes "
            f"<= {_rankscorer.MAX_RANKS} (LightGBM's default max_bin=255 keeps below that)"
        )
    thr = ts[new].astype(np.float64)
    j = np.empty(len(order), dtype=np.int64)
    j[order] = distinct - thr_off[fs]

    # Groups of equal (block, feature, threshold), ascending in j inside each segment.
    node, vec, clear = _records(n_tree, n_lo, n_hi, tree_vec, block_base)
    rb, rf, rj = block_of_tree[n_tree[node]], n_feat[node], j[node]
    o = np.lexsort((rj, rf, rb))
    rb, rf, rj, rec_vec, rec_clear = rb[o], rf[o], rj[o], vec[o], clear[o]
    seg_off = _offsets(rb * nf + rf, nseg)

    # NaN and zero: where every node of a feature treats the value like 0.0 the kernel gives it
    # the rank of 0.0; otherwise it gets rank 0 (no node false) and the list of the nodes that
    # are false for it (LightGBM's NumericalDecision: missing type None turns NaN into 0.0;
    # type Zero sends zero the default way; type NaN sends NaN the default way).
    missing = (n_dt >> 2) & 3
    default_right = (n_dt & _DEFAULT_LEFT_MASK) == 0
    below_zero = n_thr < 0.0
    not_none = np.bincount(n_feat[missing != _MISSING_NONE], minlength=nf) > 0
    has_zero_type = np.bincount(n_feat[missing == _MISSING_ZERO], minlength=nf) > 0
    scan_zero = ((~not_none).astype(np.uint8) | ((~has_zero_type).astype(np.uint8) << 1)).astype(
        np.uint8
    )
    nan_false = np.where(missing == _MISSING_NONE, below_zero, default_right)
    zero_false = np.where(missing == _MISSING_ZERO, default_right, below_zero)

    def per_document(
        keep: npt.NDArray[np.bool_],
    ) -> tuple[I64, npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
        sel = np.flatnonzero(keep)
        nd, v, c = _records(n_tree[sel], n_lo[sel], n_hi[sel], tree_vec, block_base)
        seg = block_of_tree[n_tree[sel][nd]] * nf + n_feat[sel][nd]
        so = np.argsort(seg, kind="stable")
        return _offsets(seg, nseg), v[so], c[so]

    nan_off, nan_vec, nan_clear = per_document(nan_false & not_none[n_feat])
    zero_off, zero_vec, zero_clear = per_document(zero_false & has_zero_type[n_feat])

    # Categorical nodes per segment, each with its records and bitset.
    c_tree = np.array([r[0] for r in cat], dtype=np.int64)
    c_feat = np.array([r[1] for r in cat], dtype=np.int64)
    c_seg = block_of_tree[c_tree] * nf + c_feat
    c_order = np.argsort(c_seg, kind="stable")
    cat_off = _offsets(c_seg, nseg)
    c_sorted = [cat[int(i)] for i in c_order]
    c_lo = np.array([r[2] for r in c_sorted], dtype=np.int64)
    c_hi = np.array([r[3] for r in c_sorted], dtype=np.int64)
    c_node, cat_vec, cat_clear = _records(c_tree[c_order], c_lo, c_hi, tree_vec, block_base)
    cnode_rec = _offsets(c_node, len(c_sorted))
    bits_len = np.array([len(r[4]) for r in c_sorted], dtype=np.int64)
    cat_bits_off = np.zeros(len(c_sorted) + 1, dtype=np.int64)
    np.cumsum(bits_len, out=cat_bits_off[1:])
    cat_bits = np.array([b for r in c_sorted for b in r[4]], dtype=np.uint32)

    ensemble = _rankscorer.RankEnsemble(
        num_features=nf,
        num_trees=num_trees,
        num_outputs=model.num_outputs,
        # predict(raw_score=True) sums a forest's trees (see quickscorer._build).
        average_output=False,
        block_tree=block_tree,
        tree_vec=tree_vec,
        thr_off=thr_off,
        thr=thr,
        scan_zero=scan_zero,
        seg_off=seg_off,
        rec_rank=rj.astype(np.uint8),
        rec_vec=rec_vec,
        rec_clear=rec_clear,
        nan_off=nan_off,
        nan_vec=nan_vec,
        nan_clear=nan_clear,
        zero_off=zero_off,
        zero_vec=zero_vec,
        zero_clear=zero_clear,
        cat_off=cat_off,
        cnode_rec=cnode_rec,
        cat_vec=cat_vec,
        cat_clear=cat_clear,
        cat_bits_off=cat_bits_off,
        cat_bits=cat_bits,
        leaf_value=leaf_value,
    )
    return ensemble, ""
