"""A corpus of broken LightGBM model texts, made from a real small model at test time.

`broken_models(text)` returns (name, broken text) pairs: the model cut at many offsets, every
tree field and header key corrupted in several ways, binary garbage, huge numbers, wrong tree
counts and sizes, missing sections. Every entry must be refused by `parse_model_text`.

`native_outcomes(texts)` loads texts with LightGBM's own loader, each in a forked child of one
helper process (so a crash kills only that child), and says how each went: "ok", "error" (a
LightGBMError) or the signal that killed it. The tests use it to show that the corpus holds
texts that really crash LightGBM.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

__all__ = ["broken_models", "native_outcomes", "splices", "valid_variants"]

_END_PARAMS = "end of parameters\n"


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _replace_line(text: str, n: int, new: str | None) -> str:
    lines = _lines(text)
    if new is None:
        del lines[n]
    else:
        lines[n] = new
    return "\n".join(lines)


def _find(text: str, prefix: str, occurrence: int = 0) -> int:
    hits = [i for i, line in enumerate(_lines(text)) if line.startswith(prefix)]
    return hits[min(occurrence, len(hits) - 1)]


def truncations(text: str, count: int = 60) -> list[tuple[str, str]]:
    """Cuts at evenly spread offsets plus just before and inside each section marker; every
    cut lies before the end of the parameters section (later cuts leave a complete model)."""
    limit = text.index(_END_PARAMS) + len(_END_PARAMS) - 1
    offsets = {int(limit * k / count) for k in range(1, count)}
    for marker in ("\nTree=1", "\nend of trees", "\nfeature_importances:", "\nparameters:"):
        at = text.index(marker)
        offsets.update({at, at + 1, at + 3})
    for key in ("threshold=", "left_child=", "leaf_value=", "cat_threshold=", "tree_sizes="):
        if key in text:
            at = text.index(key)
            offsets.update({at + len(key), at + len(key) + 5})
    offsets.update({int(limit * 0.40), int(limit * 0.99), limit - 1})
    return [(f"truncated@{o}", text[:o]) for o in sorted(offsets) if 0 <= o < limit]


_TREE_FIELDS = (
    "num_leaves",
    "num_cat",
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "leaf_value",
    "leaf_weight",
    "leaf_count",
    "internal_value",
    "internal_weight",
    "internal_count",
    "cat_boundaries",
    "cat_threshold",
    "is_linear",
    "shrinkage",
)


_INT_FIELDS = frozenset(
    {
        "num_leaves",
        "num_cat",
        "split_feature",
        "decision_type",
        "left_child",
        "right_child",
        "leaf_count",
        "internal_count",
        "cat_boundaries",
        "cat_threshold",
        "is_linear",
    }
)
_LOOSE_FIELDS = frozenset({"split_gain", "internal_value", "internal_weight", "leaf_weight"})


def field_corruptions(text: str) -> list[tuple[str, str]]:
    """Each tree field of a middle tree (and tree 0) corrupted several ways."""
    out: list[tuple[str, str]] = []
    num_trees = text.count("\nTree=")
    for tree in sorted({0, num_trees // 2}):
        start = _find(text, f"Tree={tree}")
        lines = _lines(text)
        block_end = lines.index("", start)
        for n in range(start + 1, block_end):
            key, _, value = lines[n].partition("=")
            values = value.split(" ") if value else []
            first = [] if not values else values[1:]
            variants = {
                "garbage": "abc",
                "empty": "",
                "one_short": " ".join(values[:-1]),
                "one_more": " ".join([*values, values[-1] if values else "1"]),
                "binary": "\x01\x02\xff\xfe",
                "double_space": "  ".join(values) if len(values) > 1 else value + "  1",
            }
            if key not in _LOOSE_FIELDS:  # these may hold inf / nan / anything numeric
                variants["nan"] = " ".join(["nan", *first])
                variants["huge"] = " ".join(["1e400", *first])
            if key in _INT_FIELDS:
                variants["int_overflow"] = " ".join(["99999999999", *first])
                variants["fraction"] = " ".join(["1.5", *first])
                if key not in ("left_child", "right_child"):
                    variants["negative"] = " ".join(["-7", *first])
            for what, new in variants.items():
                broken = _replace_line(text, n, f"{key}={new}")
                out.append((f"tree{tree}.{key}.{what}", broken))
            out.append((f"tree{tree}.{key}.missing", _replace_line(text, n, None)))
            out.append(
                (f"tree{tree}.{key}.duplicated", _replace_line(text, n, f"{lines[n]}\n{lines[n]}"))
            )
            out.append((f"tree{tree}.{key}.no_equals", _replace_line(text, n, key)))
    # Structural lies that keep every array well-formed.
    at = _find(text, "left_child=")
    lines = _lines(text)
    values = lines[at].split("=")[1].split(" ")
    if len(values) >= 2:
        cyc = list(values)
        cyc[1] = "0"  # node 1's left child is the root: a cycle
        out.append(("tree0.cycle", _replace_line(text, at, "left_child=" + " ".join(cyc))))
        out_of_range = list(values)
        out_of_range[0] = str(len(values) + 5)
        out.append(
            ("tree0.child_oob", _replace_line(text, at, "left_child=" + " ".join(out_of_range)))
        )
        leaf_oob = list(values)
        leaf_oob[0] = str(-len(values) - 9)
        out.append(("tree0.leaf_oob", _replace_line(text, at, "left_child=" + " ".join(leaf_oob))))
        twice = list(values)
        right = lines[at + 1].split("=")[1].split(" ")
        twice[0] = right[0]
        out.append(("tree0.child_twice", _replace_line(text, at, "left_child=" + " ".join(twice))))
    at = _find(text, "split_feature=")
    values = lines[at].split("=")[1].split(" ")
    out.append(
        (
            "tree0.split_feature_oob",
            _replace_line(text, at, "split_feature=" + " ".join(["999", *values[1:]])),
        )
    )
    at = _find(text, "decision_type=")
    values = lines[at].split("=")[1].split(" ")
    for dt in ("1", "12", "99", "-3"):
        out.append(
            (
                f"tree0.decision_type_{dt}",
                _replace_line(text, at, "decision_type=" + " ".join([dt, *values[1:]])),
            )
        )
    at = _find(text, "num_leaves=")
    for n in ("0", "2", "131073", "2147483647", "-1"):
        out.append((f"tree0.num_leaves_{n}", _replace_line(text, at, f"num_leaves={n}")))
    at = _find(text, "num_cat=")
    out.append(("tree0.num_cat_1", _replace_line(text, at, "num_cat=1")))
    return out


_HEADER_VARIANTS: dict[str, tuple[str, ...]] = {
    "version": ("v9", ""),
    "num_class": ("0", "abc", "-1", "99999999999", "3"),
    "num_tree_per_iteration": ("0", "2", "abc"),
    "label_index": ("-1", "x"),
    "max_feature_idx": ("-1", "2", "999", "99999999999", "abc"),
    "objective": ("", "bogus", "binary sigmoid", "lambdarank x:y"),
    "feature_names": ("a b", "", "a  b"),
    "feature_infos": ("none", "[1:2", "none none none none none none none none none none"),
    "tree_sizes": ("1", "abc", "99999999999999", "0 0 0"),
}


# LightGBM reads models without these (defaults: num_class; no objective; trees in sequence).
_OPTIONAL_HEADER = frozenset({"num_tree_per_iteration", "objective", "tree_sizes"})


def header_corruptions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, variants in _HEADER_VARIANTS.items():
        at = _find(text, f"{key}=")
        for v in variants:
            out.append((f"header.{key}={v!r}", _replace_line(text, at, f"{key}={v}")))
        if key not in _OPTIONAL_HEADER:
            out.append((f"header.{key}.missing", _replace_line(text, at, None)))
        out.append(
            (
                f"header.{key}.twice",
                _replace_line(text, at, f"{_lines(text)[at]}\n{_lines(text)[at]}"),
            )
        )
    # tree_sizes wrong by one byte for one tree, or listing one tree too few.
    at = _find(text, "tree_sizes=")
    sizes = _lines(text)[at].split("=")[1].split(" ")
    off = list(sizes)
    off[0] = str(int(off[0]) + 1)
    out.append(
        ("header.tree_sizes.off_by_one", _replace_line(text, at, "tree_sizes=" + " ".join(off)))
    )
    out.append(
        (
            "header.tree_sizes.one_short",
            _replace_line(text, at, "tree_sizes=" + " ".join(sizes[:-1])),
        )
    )
    out.append(("header.unknown_key", _replace_line(text, at, f"{_lines(text)[at]}\ncolour=blue")))
    out.append(("header.three_equals", _replace_line(text, at, f"{_lines(text)[at]}\na=b=c")))
    out.append(("header.first_line", _replace_line(text, 0, "forest")))
    return out


def tree_count_corruptions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    blocks = text.split("\nTree=")
    head, trees = blocks[0], blocks[1:]
    last_tail = trees[-1].split("\nend of trees", 1)
    trees[-1] = last_tail[0]
    tail = "\nend of trees" + last_tail[1]

    def join(ts: list[str]) -> str:
        return head + "".join("\nTree=" + t for t in ts) + tail

    out.append(("trees.last_removed", join(trees[:-1])))
    out.append(("trees.first_removed", join(trees[1:])))
    out.append(("trees.duplicated", join([trees[0], *trees])))
    renumbered = [re.sub(r"^\d+", str(i), t) for i, t in enumerate(trees[:-1])]
    out.append(("trees.removed_renumbered", join(renumbered)))
    swapped = [trees[1], trees[0], *trees[2:]]
    out.append(("trees.swapped", join(swapped)))
    out.append(("trees.none", head + tail))
    out.append(("trees.end_missing", text.replace("\nend of trees\n", "\n", 1)))
    out.append(("trees.no_blank_line", text.replace("\n\n\nTree=1", "\nTree=1", 1)))
    return out


def section_corruptions(text: str) -> list[tuple[str, str]]:
    return [
        ("sections.no_importances", text.replace("feature_importances:\n", "", 1)),
        ("sections.no_parameters", text[: text.index("\nparameters:")] + "\n"),
        ("sections.no_end_of_parameters", text.replace(_END_PARAMS, "", 1)),
        (
            "sections.bad_importance",
            text.replace("feature_importances:\n", "feature_importances:\nnot_a_feature=3\n", 1),
        ),
        (
            "sections.bad_parameter",
            text.replace("parameters:\n", "parameters:\nboosting gbdt\n", 1),
        ),
        ("sections.trailing_text", text + "hello\n"),
        (
            "sections.pandas_bad_json",
            text.rstrip("\n").rsplit("\n", 1)[0] + "\npandas_categorical:[[1,\n",
        ),
        (
            "sections.pandas_not_list",
            text.rstrip("\n").rsplit("\n", 1)[0] + "\npandas_categorical:{}\n",
        ),
    ]


def garbage(seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = [
        ("garbage.empty", ""),
        ("garbage.blank", "\n\n\n"),
        ("garbage.header_only", "tree\nversion=v4\nnum_class=1\n"),
        ("garbage.nul", "tree\x00\x00\x00"),
        ("garbage.crlf", "tree\r\nversion=v4\r\n"),
    ]
    for k in range(4):
        raw = bytes(rng.randrange(256) for _ in range(2000))
        out.append((f"garbage.bytes{k}", raw.decode("latin-1")))
        out.append((f"garbage.tree_bytes{k}", "tree\n" + raw.decode("latin-1")))
    return out


def splices(text: str, count: int = 20, seed: int = 1) -> list[tuple[str, str]]:
    """Random bytes written over random spans of the model (inside the trees)."""
    rng = random.Random(seed)
    start, end = text.index("\nTree=0"), text.index("\nend of trees")
    out = []
    for k in range(count):
        at = rng.randrange(start, end)
        junk = "".join(rng.choice("0123456789-e.= \nabc\x00") for _ in range(rng.randrange(1, 12)))
        out.append((f"splice{k}", text[:at] + junk + text[at + len(junk) :]))
    return out


def broken_models(text: str) -> list[tuple[str, str]]:
    """The whole corpus; every entry is malformed. Entries that happen to equal the original
    text are dropped."""
    entries = [
        *truncations(text),
        *field_corruptions(text),
        *header_corruptions(text),
        *tree_count_corruptions(text),
        *section_corruptions(text),
        *garbage(),
    ]
    return [(name, t) for name, t in entries if t != text]


def valid_variants(text: str) -> list[tuple[str, str]]:
    """Edits that leave a model LightGBM reads the same: the optional last line or the final
    newline cut, optional header keys left out."""
    cut = text.index(_END_PARAMS) + len(_END_PARAMS)
    out = [("cut_after_parameters", text[:cut]), ("no_final_newline", text.rstrip("\n"))]
    for key in sorted(_OPTIONAL_HEADER):
        out.append((f"header.{key}.missing", _replace_line(text, _find(text, f"{key}="), None)))
    return out


_RUNNER = r"""
import json, os, signal, sys
os.environ["OMP_NUM_THREADS"] = "1"
import lightgbm as lgb
import numpy as np
texts = json.loads(sys.stdin.read())
out = []
for text in texts:
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            b = lgb.Booster(model_str=text)
            b.predict(np.zeros((2, b.num_feature())), raw_score=True, num_threads=1)
        except Exception:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        out.append(signal.Signals(os.WTERMSIG(status)).name)
    else:
        out.append({0: "ok", 3: "error"}.get(os.WEXITSTATUS(status), "exit"))
print(json.dumps(out))
"""


def native_outcomes(texts: list[str], timeout_s: float = 120.0) -> list[str]:
    """How LightGBM's own loader takes each text: "ok", "error", "exit" or a signal name."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
    )
    outcomes: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return outcomes


def native_summary(text: str, rows: list[list[float]]) -> tuple[int, int, int, list[float]]:
    """(trees, features, outputs, raw scores of `rows` flattened) by LightGBM's own loader;
    run in a child process (`ProcessPoolExecutor`), so a crash only breaks the pool."""
    import lightgbm as lgb
    import numpy as np

    booster = lgb.Booster(model_str=text)
    scores = booster.predict(np.asarray(rows, dtype=np.float64), raw_score=True, num_threads=1)
    return (
        booster.num_trees(),
        booster.num_feature(),
        booster.num_model_per_iteration(),
        np.asarray(scores, dtype=np.float64).ravel().tolist(),
    )
