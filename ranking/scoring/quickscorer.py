"""QuickScorer: exact LightGBM raw scores from a compiled kernel, built from the model text.

`QuickScorer.from_model_text(text)` parses a LightGBM text model (strictly, with
`model_text.parse_model_text`), turns every tree into
QuickScorer's arrays (per-feature node lists sorted by threshold, one 64-bit leaf mask per node,
leaf values in left-to-right order) and hands them to the C kernel in `_quickscorer.c`.
Building takes tens of milliseconds for a 500-tree model, so a hot reload just builds again;
`from_model_text` also memoises the last few models by their SHA-256.

Scores equal `Booster.predict(matrix, raw_score=True)` bit for bit: the kernel reproduces
LightGBM's decisions (missing-value types, default directions, categorical bitsets, the
|x| <= 1e-35 rule of its dense predict path) and adds the trees' outputs in LightGBM's order.
See ranking/scoring/README.md for the algorithm and the exactness argument.

Not supported (`supports` says why, and `engines.build_scorer` falls back to LightGBM):
linear trees, trees with more than 256 leaves, and models this parser does not understand.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ranking.errors import BundleError
from ranking.scoring import _quickscorer
from ranking.scoring.model_text import _Model, _Tree, parse_model_text

__all__ = ["MAX_LEAVES", "QuickScorer", "available_kernels", "supports"]

#: Trees may have at most this many leaves: a tree with L leaves uses ceil(L / 64) 64-bit
#: words of bitvector per row (every tree of a model gets as many words as the largest).
MAX_LEAVES = 256
_WORD = 64

_CATEGORICAL_MASK = 1
_DEFAULT_LEFT_MASK = 2
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2
_ALL_ONES = (1 << 64) - 1


class _Unsupported(Exception):
    """The model is valid LightGBM but outside what the kernel handles."""


def _parse_model(text: str) -> _Model:
    """The model, parsed and checked in full by `model_text` (BundleError when malformed);
    _Unsupported when the kernel cannot score it."""
    model = parse_model_text(text)
    for index, tree in enumerate(model.trees):
        if tree.is_linear:
            raise _Unsupported(f"tree {index} is a linear tree (linear_tree=true)")
        if tree.num_leaves > MAX_LEAVES:
            raise _Unsupported(
                f"tree {index} has {tree.num_leaves} leaves; the kernel handles <= {MAX_LEAVES}"
            )
    return model


def _leaf_order(tree: _Tree) -> tuple[list[int], list[int], list[int]]:
    """In-order numbering of a tree's leaves.

    Returns (bit_of_leaf, left_lo, left_hi): leaf i gets bit bit_of_leaf[i] (left to right), and
    the leaves of node n's left subtree are the bits [left_lo[n], left_hi[n]).
    """
    internal = tree.num_leaves - 1
    bit_of_leaf = [0] * tree.num_leaves
    left_lo = [0] * internal
    left_hi = [0] * internal
    if internal == 0:
        return bit_of_leaf, left_lo, left_hi
    next_bit = 0
    seen = 0
    # Iterative in-order walk; ("exit", n) marks the end of n's left subtree.
    stack: list[tuple[str, int]] = [("visit", 0)]
    while stack:
        action, node = stack.pop()
        if action == "exit":
            left_hi[node] = next_bit
            continue
        if node < 0:
            leaf = ~node
            if not 0 <= leaf < tree.num_leaves:
                raise ValueError("a child points to a leaf out of range")
            bit_of_leaf[leaf] = next_bit
            next_bit += 1
            continue
        if not 0 <= node < internal:
            raise ValueError("a child points to a node out of range")
        seen += 1
        if seen > internal:
            raise ValueError("the tree is not a tree (a node is reached twice)")
        left_lo[node] = next_bit
        stack.append(("visit", tree.right_child[node]))
        stack.append(("exit", node))
        stack.append(("visit", tree.left_child[node]))
    if next_bit != tree.num_leaves or seen != internal:
        raise ValueError("the tree does not reach every leaf exactly once")
    return bit_of_leaf, left_lo, left_hi


def _word_masks(first_slot: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """(slot, mask) for each 64-bit word that the leaf-bit range [lo, hi) touches; the mask
    clears the range's bits in that word."""
    out = []
    for w in range(lo // _WORD, (hi - 1) // _WORD + 1):
        a = max(lo, w * _WORD) - w * _WORD
        z = min(hi, (w + 1) * _WORD) - w * _WORD
        out.append((first_slot + w, _ALL_ONES ^ (((1 << (z - a)) - 1) << a)))
    return out


def _offsets(features: Sequence[int], num_features: int) -> npt.NDArray[np.int64]:
    counts = np.bincount(np.asarray(features, dtype=np.int64), minlength=num_features)
    off = np.zeros(num_features + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return off


def _grouped(
    features: list[int], trees: list[int], masks: list[int], num_features: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.uint64], list[int]]:
    order = sorted(range(len(features)), key=lambda i: features[i])
    return (
        _offsets(features, num_features),
        np.array([trees[i] for i in order], dtype=np.uint32),
        np.array([masks[i] for i in order], dtype=np.uint64),
        order,
    )


# Values every probe row may take whatever the model: LightGBM's special cases (NaN, zeros, values
# it rounds to zero, the zero threshold itself and its neighbours), huge values and categorical
# edge cases (negative, fractional, beyond int32).
_KZERO = float(np.float32(1e-35))
_SPECIAL_VALUES = np.array(
    [
        math.nan,
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        _KZERO,
        -_KZERO,
        math.nextafter(_KZERO, math.inf),
        math.nextafter(-_KZERO, -math.inf),
        1e300,
        -1e300,
        math.inf,
        -math.inf,
        -1.0,
        -0.5,
        0.5,
        1.0,
        2.0**31,
        2.0**31 - 1,
        2.0**40,
    ],
    dtype=np.float64,
)


def _probe_values(
    thresholds: npt.NDArray[np.float64], categories: Sequence[int]
) -> npt.NDArray[np.float64]:
    """Values of one feature that exercise every decision of the model around its splits."""
    values = [_SPECIAL_VALUES]
    if len(thresholds):
        thr = np.unique(np.asarray(thresholds, dtype=np.float64))
        values += [thr, np.nextafter(thr, np.inf), np.nextafter(thr, -np.inf)]
    if len(categories):
        cats = np.unique(np.asarray(categories, dtype=np.float64))
        values += [cats, cats + 0.5, cats + 1.0]
    return np.concatenate(values)


def _build(
    model: _Model, tree_block: int = 512
) -> tuple[_quickscorer.Ensemble, list[npt.NDArray[np.float64]]]:
    nf = model.num_features
    num_trees = len(model.trees)
    num_feat: list[int] = []
    num_thr: list[float] = []
    num_tree: list[int] = []
    num_mask: list[int] = []
    nan_feat: list[int] = []
    nan_tree: list[int] = []
    nan_mask: list[int] = []
    zero_feat: list[int] = []
    zero_tree: list[int] = []
    zero_mask: list[int] = []
    cat_feat: list[int] = []
    cat_tree: list[int] = []
    cat_mask: list[int] = []
    cat_sets: list[list[int]] = []
    # Bitvector words per tree and row; a tree's slot for word w is t * words + w.
    words = -(-max(tree.num_leaves for tree in model.trees) // _WORD)
    leaf_value = np.zeros(num_trees * words * _WORD, dtype=np.float64)
    missing_types: list[set[int]] = [set() for _ in range(nf)]

    for t, tree in enumerate(model.trees):
        bit_of_leaf, left_lo, left_hi = _leaf_order(tree)
        for leaf, bit in enumerate(bit_of_leaf):
            leaf_value[t * words * _WORD + bit] = tree.leaf_value[leaf]
        for n in range(tree.num_leaves - 1):
            f = tree.split_feature[n]
            if not 0 <= f < nf:
                raise ValueError(f"tree {t} splits on feature {f}; the model has {nf}")
            # The node clears leaf bits [lo, hi), its left subtree: one (slot, mask) record per
            # word the range touches (a single one for trees of <= 64 leaves).
            records = _word_masks(t * words, left_lo[n], left_hi[n])
            dt = tree.decision_type[n]
            if dt & _CATEGORICAL_MASK:
                idx = int(tree.threshold[n])
                if not 0 <= idx < len(tree.cat_boundaries) - 1:
                    raise ValueError(f"tree {t}: categorical split {n} has no bitset")
                lo, hi = tree.cat_boundaries[idx], tree.cat_boundaries[idx + 1]
                for slot, mask in records:
                    cat_feat.append(f)
                    cat_tree.append(slot)
                    cat_mask.append(mask)
                    cat_sets.append(tree.cat_threshold[lo:hi])
                continue
            missing = (dt >> 2) & 3
            if missing not in (_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN):
                raise _Unsupported(f"tree {t} node {n} has unknown missing type {missing}")
            thr = tree.threshold[n]
            if math.isnan(thr):
                raise ValueError(f"tree {t} node {n} has a NaN threshold")
            default_right = not dt & _DEFAULT_LEFT_MASK
            for slot, mask in records:
                num_feat.append(f)
                num_thr.append(thr)
                num_tree.append(slot)
                num_mask.append(mask)
            # NumericalDecision with x NaN: None -> x = 0.0 and compare; Zero -> 0.0 is zero ->
            # default direction; NaN -> default direction.
            missing_types[f].add(missing)
            nan_false = thr < 0.0 if missing == _MISSING_NONE else default_right
            # x == 0.0 (or |x| <= 1e-35, which LightGBM zeroes): only the Zero type takes the
            # default direction; the others compare 0.0 <= threshold.
            zero_false = default_right if missing == _MISSING_ZERO else thr < 0.0
            for slot, mask in records:
                if nan_false:
                    nan_feat.append(f)
                    nan_tree.append(slot)
                    nan_mask.append(mask)
                if zero_false:
                    zero_feat.append(f)
                    zero_tree.append(slot)
                    zero_mask.append(mask)

    # Numerical lists: one segment per (tree block, feature), sorted by threshold, each ending
    # with a +inf sentinel that stops the kernel's scan.
    num_blocks = -(-num_trees // tree_block)
    segment = [num_tree[i] // words // tree_block * nf + num_feat[i] for i in range(len(num_feat))]
    order = sorted(range(len(num_feat)), key=lambda i: (segment[i], num_thr[i]))
    counts = np.bincount(np.asarray(segment, dtype=np.int64), minlength=num_blocks * nf) + 1
    n_off = np.zeros(num_blocks * nf + 1, dtype=np.int64)
    np.cumsum(counts, out=n_off[1:])
    total = int(n_off[-1])
    n_thr = np.full(total, np.inf, dtype=np.float64)
    n_tree = np.zeros(total, dtype=np.uint32)
    n_mask = np.full(total, _ALL_ONES, dtype=np.uint64)
    fill = n_off[:-1].copy()
    for i in order:
        sg = segment[i]
        pos = int(fill[sg])
        n_thr[pos] = num_thr[i]
        n_tree[pos] = num_tree[i]
        n_mask[pos] = num_mask[i]
        fill[sg] += 1

    # Where NaN or zero decides like the value 0.0 at every node of a feature, the kernel scans
    # 0.0 with the block's other values instead of applying a per-row list (much faster for
    # sparse or often-missing features). NaN: only missing type None turns NaN into 0.0. Zero:
    # only missing type Zero treats it differently from 0.0.
    nan_scans = [types <= {_MISSING_NONE} for types in missing_types]
    zero_scans = [_MISSING_ZERO not in types for types in missing_types]
    scan_zero = np.array(
        [int(a) | int(b) << 1 for a, b in zip(nan_scans, zero_scans, strict=True)], dtype=np.uint8
    )
    keep = [i for i, f in enumerate(nan_feat) if not nan_scans[f]]
    nan_off, nan_t, nan_m, _ = _grouped(
        [nan_feat[i] for i in keep], [nan_tree[i] for i in keep], [nan_mask[i] for i in keep], nf
    )
    keep = [i for i, f in enumerate(zero_feat) if not zero_scans[f]]
    zero_off, zero_t, zero_m, _ = _grouped(
        [zero_feat[i] for i in keep],
        [zero_tree[i] for i in keep],
        [zero_mask[i] for i in keep],
        nf,
    )
    cat_off, cat_t, cat_m, cat_order = _grouped(cat_feat, cat_tree, cat_mask, nf)
    bits: list[int] = []
    bits_off = [0]
    for i in cat_order:
        bits.extend(cat_sets[i])
        bits_off.append(len(bits))

    categories: list[list[int]] = [[] for _ in range(nf)]
    for f, bitset in zip(cat_feat, cat_sets, strict=True):
        categories[f].extend(
            32 * w + b for w, word in enumerate(bitset) for b in range(32) if word >> b & 1
        )
    thresholds: list[list[float]] = [[] for _ in range(nf)]
    for f, thr in zip(num_feat, num_thr, strict=True):
        thresholds[f].append(thr)
    probes = [
        _probe_values(np.asarray(thresholds[f], dtype=np.float64), categories[f]) for f in range(nf)
    ]

    ensemble = _quickscorer.Ensemble(
        num_features=nf,
        num_trees=num_trees,
        num_outputs=model.num_outputs,
        words=words,
        # Random forests ("average_output" in the header) are averaged by GBDT::Predict only;
        # predict(raw_score=True) goes through GBDT::PredictRaw, which returns the plain sum of
        # the trees. Raw scores are the contract, so the kernel must not divide.
        average_output=False,
        num_off=n_off,
        num_thr=n_thr,
        num_tree=n_tree,
        num_mask=n_mask,
        nan_off=nan_off,
        nan_tree=nan_t,
        nan_mask=nan_m,
        zero_off=zero_off,
        zero_tree=zero_t,
        zero_mask=zero_m,
        cat_off=cat_off,
        cat_tree=cat_t,
        cat_mask=cat_m,
        cat_bits_off=np.array(bits_off, dtype=np.int64),
        cat_bits=np.array(bits, dtype=np.uint32),
        leaf_value=leaf_value,
        scan_zero=scan_zero,
    )
    return ensemble, probes


def supports(model_text: str) -> str | None:
    """None when QuickScorer can score this model exactly, else the reason it cannot."""
    try:
        _parse_model(model_text)
    except _Unsupported as exc:
        return str(exc)
    except BundleError as exc:
        return f"the model text could not be parsed: {exc.message}"
    except (ValueError, KeyError, IndexError) as exc:
        return f"the model text could not be parsed: {exc}"
    return None


def available_kernels() -> dict[str, int]:
    """Kernels usable on this CPU, name -> id for `QuickScorer.score(..., kernel=)`."""
    return _quickscorer.available_kernels()


class QuickScorer:
    """A `Scorer` backed by the QuickScorer C kernel; immutable and thread-safe."""

    name = "quickscorer"

    def __init__(
        self,
        ensemble: _quickscorer.Ensemble,
        model_hash: str,
        probes: Sequence[npt.NDArray[np.float64]] = (),
    ) -> None:
        self._ensemble = ensemble
        self._probes = tuple(probes)
        self.model_hash = model_hash
        self.num_features: int = ensemble.num_features
        self.num_outputs: int = ensemble.num_outputs
        self.num_trees: int = ensemble.num_trees
        #: The SIMD variant used by default on this CPU ("avx512", "avx2" or "scalar").
        self.kernel: str = _quickscorer.auto_kernel()

    @classmethod
    def from_model_text(cls, model_text: str) -> QuickScorer:
        """Builds a scorer; raises BundleError when the model is unsupported or malformed."""
        digest = hashlib.sha256(model_text.encode()).hexdigest()
        return _build_cached(digest, model_text)

    def score(
        self, matrix: npt.NDArray[np.float64], *, kernel: int = -1
    ) -> npt.NDArray[np.float64]:
        """Raw scores, like `Booster.predict(matrix, raw_score=True)`.

        `matrix` must be a C-contiguous float64 array (n, num_features); anything else raises
        ValueError. `kernel` forces a kernel id from `available_kernels()` (tests, benchmarks).
        """
        out = self._ensemble.predict(matrix, kernel)
        if self.num_outputs == 1:
            return out.reshape(-1)
        return out

    def probe_matrix(self, num_rows: int, seed: int = 0) -> npt.NDArray[np.float64]:
        """Rows whose values sit on, just above and just below the model's thresholds, on its
        categories, and on LightGBM's special cases (NaN, +-0, 1e-40, +-1e-35, inf, huge).

        Used by `engines.build_scorer` to check parity against LightGBM before trusting this
        scorer, and by the tests.
        """
        rng = np.random.default_rng(seed)
        out = np.empty((num_rows, self.num_features), dtype=np.float64)
        for f in range(self.num_features):
            values = self._probes[f] if self._probes else _SPECIAL_VALUES
            out[:, f] = rng.choice(values, size=num_rows)
        return out

    def __repr__(self) -> str:
        return (
            f"QuickScorer(trees={self.num_trees}, features={self.num_features}, "
            f"outputs={self.num_outputs}, kernel={self.kernel!r}, model={self.model_hash[:12]})"
        )


# A handful of recently built models, keyed by the model's hash: a reload of an unchanged
# bundle, or several scorers built from one model, share one immutable ensemble.
@functools.lru_cache(maxsize=4)
def _build_cached(digest: str, model_text: str) -> QuickScorer:
    try:
        ensemble, probes = _build(_parse_model(model_text))
    except _Unsupported as exc:
        raise BundleError(f"QuickScorer cannot score this model: {exc}") from exc
    except (ValueError, KeyError, IndexError) as exc:
        # The detail (possibly a builtin's message) stays on the chained exception for logs.
        raise BundleError("QuickScorer could not read the model text") from exc
    return QuickScorer(ensemble, digest, probes)
