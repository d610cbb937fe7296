"""Random LightGBM text models, written directly (no training), for the property tests.

Training only reaches the shapes a data set leads to; writing the text reaches every rule the
scorers must follow: any tree shape up to 256 leaves, thresholds shared across trees and features
(so equal-threshold groups form), thresholds at LightGBM's special values (0.0, -0.0, +-1e-35f,
denormals, huge), every missing type with either default direction on any node, categorical
bitsets of several words, and multiclass. LightGBM itself loads the text and is the oracle.
"""

from __future__ import annotations

import math

import numpy as np

KZERO = float(np.float32(1e-35))
#: Thresholds every feature may draw from besides its own random ones.
SPECIAL_THRESHOLDS = [
    0.0,
    -0.0,
    KZERO,
    -KZERO,
    math.nextafter(KZERO, 0.0),
    1e-36,
    -1e-36,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-310,
    1e300,
    -1e300,
    -1.0,
    1.0,
    2.5,
]
#: Row values every feature may take besides values at and around the thresholds.
SPECIAL_VALUES = [
    math.nan,
    0.0,
    -0.0,
    KZERO,
    -KZERO,
    math.nextafter(KZERO, 1.0),
    math.nextafter(-KZERO, -1.0),
    1e-40,
    -1e-40,
    5e-324,
    -5e-324,
    1e-310,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    -1.0,
    -0.5,
    0.5,
    3.0,
    31.0,
    32.0,
    63.9,
    2.0**31,
    1e10,
]


def _tree_shape(rng: np.random.Generator, leaves: int) -> tuple[list[int], list[int]]:
    """left_child / right_child of a random binary tree with `leaves` leaves; node 0 is the
    root, leaves are ~k, node and leaf numbers shuffled."""
    internal = leaves - 1
    if internal == 0:
        return [], []
    left = [0] * internal
    right = [0] * internal
    node_ids = [0, *(rng.permutation(internal - 1) + 1).tolist()] if internal else []
    leaf_ids = rng.permutation(leaves).tolist()
    # Split a random open slot until there are `leaves` of them; slots are (parent, side).
    open_slots: list[tuple[int, int]] = []
    if internal:
        open_slots = [(0, 0), (0, 1)]
    used = 1
    while used < internal:
        parent, side = open_slots.pop(int(rng.integers(len(open_slots))))
        child = node_ids[used]
        used += 1
        (left if side == 0 else right)[parent] = child
        open_slots += [(child, 0), (child, 1)]
    for (parent, side), leaf in zip(open_slots, leaf_ids, strict=True):
        (left if side == 0 else right)[parent] = ~leaf
    return left, right


def _fmt(values: list[float] | list[int]) -> str:
    return " ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in values)


def random_model(
    rng: np.random.Generator,
    num_features: int,
    num_trees: int,
    max_leaves: int,
    num_class: int = 1,
    categorical: bool = True,
) -> tuple[str, list[list[float]]]:
    """(model text, thresholds per feature). Feature 0 is categorical when `categorical` and
    there are at least two features; the others are numerical."""
    cat_features = {0} if categorical and num_features > 1 else set()
    pools = [
        sorted(
            set(rng.normal(scale=2.0, size=int(rng.integers(1, 12))).round(3).tolist())
            | set(rng.choice(SPECIAL_THRESHOLDS, size=3).tolist())
        )
        for _ in range(num_features)
    ]
    used: list[list[float]] = [[] for _ in range(num_features)]
    trees = []
    total = num_trees * num_class
    for index in range(total):
        leaves = int(rng.integers(1, max_leaves + 1))
        left, right = _tree_shape(rng, leaves)
        split_feature, threshold, decision_type = [], [], []
        cat_boundaries, cat_threshold = [0], []
        for _ in range(leaves - 1):
            f = int(rng.integers(num_features))
            split_feature.append(f)
            if f in cat_features:
                words = int(rng.integers(1, 4))
                bits = rng.integers(0, 2**32, size=words, dtype=np.uint64).tolist()
                threshold.append(float(len(cat_boundaries) - 1))
                cat_threshold += [int(b) for b in bits]
                cat_boundaries.append(len(cat_threshold))
                decision_type.append(1 | (int(rng.integers(2)) << 1))  # default bit ignored
            else:
                thr = float(rng.choice(pools[f]))
                used[f].append(thr)
                threshold.append(thr)
                missing = int(rng.choice([0, 1, 2]))
                decision_type.append((missing << 2) | (int(rng.integers(2)) << 1))
        leaf_value = rng.normal(size=leaves).tolist()
        if rng.random() < 0.2:  # large and tiny leaf values make summation order visible
            leaf_value = [v * float(rng.choice([1e12, 1e-12, 1.0])) for v in leaf_value]
        num_cat = len(cat_boundaries) - 1
        lines = [
            f"Tree={index}",
            f"num_leaves={leaves}",
            f"num_cat={num_cat}",
        ]
        if leaves > 1:
            lines += [
                f"split_feature={_fmt(split_feature)}",
                "split_gain=" + " ".join("1" for _ in split_feature),
                "threshold=" + " ".join(repr(t) for t in threshold),
                f"decision_type={_fmt(decision_type)}",
                f"left_child={_fmt(left)}",
                f"right_child={_fmt(right)}",
            ]
        lines.append("leaf_value=" + " ".join(repr(v) for v in leaf_value))
        if leaves > 1:
            lines += [
                "leaf_weight=" + " ".join("1" for _ in leaf_value),
                "leaf_count=" + " ".join("1" for _ in leaf_value),
                "internal_value=" + " ".join("0" for _ in split_feature),
                "internal_weight=" + " ".join("1" for _ in split_feature),
                "internal_count=" + " ".join("1" for _ in split_feature),
            ]
        if num_cat:
            lines += [
                f"cat_boundaries={_fmt(cat_boundaries)}",
                f"cat_threshold={_fmt(cat_threshold)}",
            ]
        lines += ["is_linear=0", "shrinkage=1", "", ""]
        trees.append("\n".join(lines))
    objective = f"multiclass num_class:{num_class}" if num_class > 1 else "regression"
    header = "\n".join(
        [
            "tree",
            "version=v4",
            f"num_class={num_class}",
            f"num_tree_per_iteration={num_class}",
            "label_index=0",
            f"max_feature_idx={num_features - 1}",
            f"objective={objective}",
            "feature_names=" + " ".join(f"f{i}" for i in range(num_features)),
            "feature_infos=" + " ".join("none" for _ in range(num_features)),
            "",
            "",
        ]
    )
    tail = (
        "end of trees\n\nfeature_importances:\n\nparameters:\n[boosting: gbdt]\n"
        f"[objective: {objective.split()[0]}]\nend of parameters\n\npandas_categorical:null\n"
    )
    return header + "".join(trees) + tail, used


def random_rows(
    rng: np.random.Generator, num_rows: int, thresholds: list[list[float]]
) -> np.ndarray:
    """Rows mixing special values, every threshold and its neighbours, and random values."""
    out = np.empty((num_rows, len(thresholds)), dtype=np.float64)
    for f, thr in enumerate(thresholds):
        pool = list(SPECIAL_VALUES)
        for t in thr:
            pool += [t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)]
        column = rng.choice(np.asarray(pool, dtype=np.float64), size=num_rows)
        noise = rng.random(num_rows) < 0.2
        column[noise] = rng.normal(scale=3.0, size=int(noise.sum()))
        out[:, f] = column
    return out
