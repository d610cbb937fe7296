"""A strict parser of LightGBM's text model format: nothing malformed reaches a native loader.

LightGBM's own loader (`GBDT::LoadModelFromString`, `Tree::Tree(const char*)`) trusts its
input: a model cut short, a `tree_sizes` entry that points past the text, a child index out of
range or an array with too few values makes it read out of bounds, abort (`Log::Fatal` inside
an OpenMP region) or build a tree that crashes later in `predict`. A ranking server that loads
models sent by operators must never die of that, so every model text is read here first, in
full, and refused with a `BundleError` naming the line and the problem; only text this module
accepted is handed to `lightgbm.Booster` (see `lightgbm_scorer.py`) or to QuickScorer's builder.

What is checked, following LightGBM 4's writer (`GBDT::SaveModelToString`, `Tree::ToString`):

- the header: `tree`, then `version`, `num_class`, `num_tree_per_iteration`, `label_index`,
  `max_feature_idx`, `objective` (a known objective), `average_output`, `feature_names`,
  `monotone_constraints`, `feature_infos`, `tree_sizes`; no unknown or repeated key, every
  integer in range, one name / info / constraint per feature;
- every `Tree=i` block, numbered in order: only known keys, each once; `num_leaves`,
  `num_cat`, every array with exactly the values its key needs, of the right type (int32,
  int8 decision types, uint32 bitsets, finite floats where prediction reads them); children
  that form one tree rooted at node 0 reaching every node and leaf exactly once; split features
  within `max_feature_idx`; categorical splits whose index lies in `cat_boundaries`, which
  starts at 0, never decreases and ends at the bitset length; linear-tree coefficients whose
  counts add up; `tree_sizes` equal to each block's byte length (LightGBM seeks by them);
- `end of trees`, the `feature_importances:` section (names of the model's features with
  positive counts), `parameters:` ... `end of parameters`, an optional `parser:` section and
  the optional `pandas_categorical:` JSON line the Python package reads; nothing else.

The result is the `_Model` / `_Tree` the QuickScorer builder consumes (field names kept as
they were in `quickscorer.py`, where this parser used to live).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from ranking.errors import BundleError

__all__ = ["MAX_FEATURES", "MAX_LEAVES_PER_TREE", "MAX_TREES", "parse_model_text"]

#: Upper bounds well beyond any real model; they keep a hostile file from asking for
#: gigabytes (LightGBM allocates `num_leaves` entries per array before it reads them).
MAX_FEATURES = 1_000_000
MAX_TREES = 1_000_000
MAX_LEAVES_PER_TREE = 1 << 17

_INT32 = (-(1 << 31), (1 << 31) - 1)
_UINT32 = (0, (1 << 32) - 1)
_COUNT = (0, (1 << 31) - 1)
_INT8 = (-128, 127)

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_INT = r"-?\d+"
_FLOATS = re.compile(rf"(?:{_NUM}(?: {_NUM})*)?")
# Statistics LightGBM writes but prediction never reads may be inf or nan (e.g. a gain).
_LOOSE = rf"(?:{_NUM}|-?inf|-?nan)"
_LOOSE_FLOATS = re.compile(rf"(?:{_LOOSE}(?: {_LOOSE})*)?")
_INTS = re.compile(rf"(?:{_INT}(?: {_INT})*)?")
# Linear trees separate their per-leaf lists with extra spaces.
_SPACED_INTS = re.compile(rf" *(?:{_INT} *)*")
_SPACED_FLOATS = re.compile(rf" *(?:{_NUM} *)*")
_FEATURE_INFO = re.compile(rf"none|\[{_LOOSE}:{_LOOSE}\]|{_INT}(?::{_INT})*")
_PARAMETER = re.compile(r"\[[A-Za-z0-9_]+: [^\n]*\]")

_OBJECTIVES = frozenset(
    {
        "regression",
        "regression_l1",
        "quantile",
        "huber",
        "fair",
        "poisson",
        "binary",
        "lambdarank",
        "rank_xendcg",
        "multiclass",
        "multiclassova",
        "cross_entropy",
        "cross_entropy_lambda",
        "mape",
        "gamma",
        "tweedie",
        "custom",
    }
)
_OBJECTIVE_PARAM = re.compile(rf"[a-z_]+:{_NUM}")

_HEADER_KEYS = frozenset(
    {
        "version",
        "num_class",
        "num_tree_per_iteration",
        "label_index",
        "max_feature_idx",
        "objective",
        "average_output",
        "feature_names",
        "monotone_constraints",
        "feature_infos",
        "tree_sizes",
    }
)
# LightGBM's tree reader stops after 22 lines; these are all the keys it knows.
_TREE_KEYS = frozenset(
    {
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
        "leaf_const",
        "num_features",
        "leaf_features",
        "leaf_coeff",
        "shrinkage",
    }
)
_VERSIONS = frozenset({"v2", "v3", "v4"})
_CATEGORICAL_MASK = 1
_MISSING_NAN = 2


@dataclass(frozen=True, slots=True)
class _Tree:
    """One tree as LightGBM stores it: node arrays of num_leaves - 1, leaf arrays of
    num_leaves; a child >= 0 is a node, < 0 the leaf ~child."""

    num_leaves: int
    split_feature: list[int]
    threshold: list[float]
    decision_type: list[int]
    left_child: list[int]
    right_child: list[int]
    leaf_value: list[float]
    cat_boundaries: list[int]
    cat_threshold: list[int]
    is_linear: bool = False


@dataclass(frozen=True, slots=True)
class _Model:
    """A parsed model: what prediction needs, plus the header facts bundles check."""

    num_features: int
    num_outputs: int
    average_output: bool
    trees: list[_Tree]
    feature_names: tuple[str, ...] = ()
    num_class: int = 1
    objective: str = ""
    digest: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class _Header:
    num_class: int
    num_tree_per_iteration: int
    max_feature_idx: int
    objective: str
    average_output: bool
    feature_names: tuple[str, ...]
    tree_sizes: list[int] | None


class _Refused(Exception):
    """Raised inside the parser with the 1-based line number; turned into BundleError."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


T = TypeVar("T")


def parse_model_text(model_text: str, digest: str | None = None) -> _Model:
    """Parse and check a whole LightGBM text model; raise BundleError naming the line.

    `digest` is the text's SHA-256 (hex) when the caller already has it (the bundle loader
    does); otherwise it is computed, once, when the text is parsed. The last two models are
    memoised by their text, so the bundle loader, QuickScorer and the LightGBM scorer share
    one parse and one hash of a model.
    """
    if not isinstance(model_text, str):
        raise BundleError("the model text must be a str")
    with _MEMO_LOCK:
        hit = _MEMO.get(model_text)
        if hit is not None:
            _MEMO.move_to_end(model_text)
            return hit
    if digest is None:
        digest = hashlib.sha256(model_text.encode("utf-8", "surrogatepass")).hexdigest()
    try:
        model = _Parser(model_text, digest).parse()
    except _Refused as exc:
        raise BundleError(f"model text line {exc.line}: {exc.message}") from None
    with _MEMO_LOCK:
        _MEMO[model_text] = model
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return model


# Two entries: the serving model and a candidate (a parsed 500-tree model holds ~10 MB). Keyed
# by the text: a str caches its hash, so a hit on the same object costs no pass over the text.
_MEMO_SIZE = 2
_MEMO: OrderedDict[str, _Model] = OrderedDict()
_MEMO_LOCK = threading.Lock()


class _Parser:
    def __init__(self, text: str, digest: str) -> None:
        self.text = text
        self.digest = digest
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()  # the final newline
        self.i = 0  # index of the next line

    # -- helpers -----------------------------------------------------------------------------

    def refuse(self, message: str, line: int | None = None) -> _Refused:
        return _Refused(self.i + 1 if line is None else line, message)

    def peek(self) -> str | None:
        return self.lines[self.i] if self.i < len(self.lines) else None

    def skip_blank(self) -> None:
        while self.i < len(self.lines) and self.lines[self.i] == "":
            self.i += 1

    # -- the whole model ---------------------------------------------------------------------

    def parse(self) -> _Model:
        text = self.text
        if not text.strip():
            raise _Refused(1, "the model text is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = text.count("\n", 0, exc.start) + 1
            raise _Refused(line, "the text is not valid UTF-8") from None
        bad = next((c for c in ("\x00", "\r") if c in text), None)
        if bad is not None:
            line = text.count("\n", 0, text.index(bad)) + 1
            what = "a NUL byte" if bad == "\x00" else "a carriage return (save with \\n endings)"
            raise _Refused(line, f"{what}: not a LightGBM text model")
        if self.lines[0] != "tree":
            raise _Refused(1, "not a LightGBM text model (the first line must be 'tree')")
        self.i = 1
        header, header_lines = self.header()
        num_features = header.max_feature_idx + 1
        trees, sizes = self.trees(num_features)
        if not trees:
            raise self.refuse("the model has no trees")
        per_iteration = header.num_tree_per_iteration
        if len(trees) % per_iteration:
            raise self.refuse(
                f"{len(trees)} trees is not a multiple of num_tree_per_iteration={per_iteration}"
            )
        expected_sizes = header_lines.get("tree_sizes")
        if expected_sizes is not None:
            declared = header.tree_sizes or []
            if len(declared) != len(trees):
                raise _Refused(
                    expected_sizes,
                    f"tree_sizes lists {len(declared)} trees, the model has {len(trees)}",
                )
            for n, (want, got) in enumerate(zip(declared, sizes, strict=True)):
                if want != got:
                    raise _Refused(
                        expected_sizes, f"tree_sizes says tree {n} is {want} bytes, it is {got}"
                    )
        names = header.feature_names
        self.tail(names)
        return _Model(
            num_features=num_features,
            num_outputs=per_iteration,
            average_output=header.average_output,
            trees=trees,
            feature_names=names,
            num_class=header.num_class,
            objective=header.objective,
            digest=self.digest,
        )

    # -- header ------------------------------------------------------------------------------

    def header(self) -> tuple[_Header, dict[str, int]]:
        raw: dict[str, str] = {}
        where: dict[str, int] = {}
        while True:
            line = self.peek()
            if line is None:
                raise self.refuse("the model text ends in its header (no Tree= block)")
            if line.startswith("Tree="):
                break
            if line:
                key, sep, value = line.partition("=")
                if not sep and key != "average_output":
                    raise self.refuse(f"expected key=value in the header, got {_show(line)}")
                if key not in _HEADER_KEYS:
                    raise self.refuse(f"unknown header key {_show(key)}")
                if key in raw:
                    raise self.refuse(f"header key {key} appears twice")
                if sep and key == "average_output":
                    raise self.refuse("average_output takes no value")
                if "=" in value and key not in ("feature_names", "monotone_constraints"):
                    raise self.refuse(f"{key}: a value may not contain '='")
                raw[key] = value
                where[key] = self.i + 1
            self.i += 1
        end = self.i + 1

        def need(key: str) -> str:
            if key not in raw:
                raise _Refused(end, f"the header lacks {key}")
            return raw[key]

        def integer(key: str, lo: int, hi: int) -> int:
            value = need(key)
            if not re.fullmatch(_INT, value):
                raise _Refused(where[key], f"{key} must be an integer, got {_show(value)}")
            number = int(value)
            if not lo <= number <= hi:
                raise _Refused(where[key], f"{key}={number} is outside [{lo}, {hi}]")
            return number

        version = need("version")
        if version not in _VERSIONS:
            raise _Refused(where["version"], f"unsupported model version {_show(version)}")
        num_class = integer("num_class", 1, 1 << 16)
        if "num_tree_per_iteration" in raw:
            per_iteration = integer("num_tree_per_iteration", 1, 1 << 16)
        else:
            per_iteration = num_class
        if per_iteration != num_class:
            raise _Refused(
                where.get("num_tree_per_iteration", end),
                f"num_tree_per_iteration={per_iteration} differs from num_class={num_class}",
            )
        integer("label_index", 0, _INT32[1])
        max_feature_idx = integer("max_feature_idx", 0, MAX_FEATURES - 1)
        num_features = max_feature_idx + 1
        objective = raw.get("objective", "")
        if "objective" in raw:
            parts = objective.split(" ")
            if parts[0] not in _OBJECTIVES or not all(
                _OBJECTIVE_PARAM.fullmatch(p) for p in parts[1:]
            ):
                raise _Refused(where["objective"], f"unknown objective {_show(objective)}")
        names = need("feature_names").split(" ")
        if len(names) != num_features or not all(names):
            raise _Refused(
                where["feature_names"],
                f"feature_names must list {num_features} names separated by single spaces "
                f"(max_feature_idx={max_feature_idx}), got {len(names)}",
            )
        if len(set(names)) != len(names):
            raise _Refused(where["feature_names"], "feature_names has a name twice")
        infos = need("feature_infos").split(" ")
        if len(infos) != num_features:
            raise _Refused(
                where["feature_infos"],
                f"feature_infos has {len(infos)} entries, the model has {num_features} features",
            )
        for k, info in enumerate(infos):
            if not _FEATURE_INFO.fullmatch(info):
                raise _Refused(
                    where["feature_infos"], f"feature_infos entry {k} is malformed: {_show(info)}"
                )
        if "monotone_constraints" in raw:
            values = raw["monotone_constraints"].split(" ")
            if len(values) != num_features or not all(v in ("-1", "0", "1") for v in values):
                raise _Refused(
                    where["monotone_constraints"],
                    f"monotone_constraints must be {num_features} values of -1, 0 or 1",
                )
        tree_sizes: list[int] | None = None
        if "tree_sizes" in raw:
            value = raw["tree_sizes"]
            if not re.fullmatch(r"\d+(?: \d+)*", value):
                raise _Refused(where["tree_sizes"], "tree_sizes must be byte counts")
            tree_sizes = [int(v) for v in value.split(" ")]
        header = _Header(
            num_class=num_class,
            num_tree_per_iteration=per_iteration,
            max_feature_idx=max_feature_idx,
            objective=objective,
            average_output="average_output" in raw,
            feature_names=tuple(names),
            tree_sizes=tree_sizes,
        )
        return header, where

    # -- trees -------------------------------------------------------------------------------

    def trees(self, num_features: int) -> tuple[list[_Tree], list[int]]:
        trees: list[_Tree] = []
        sizes: list[int] = []
        # Byte offset of each line's start (tree blocks are ASCII, checked below), so the
        # blocks' sizes can be compared with tree_sizes.
        starts: list[int] = []
        while True:
            line = self.peek()
            if line is None:
                raise self.refuse("the model text is truncated ('end of trees' is missing)")
            if line == "end of trees":
                break
            if not line.startswith("Tree="):
                raise self.refuse(
                    f"expected Tree={len(trees)} or 'end of trees', got {_show(line)}"
                )
            if line != f"Tree={len(trees)}":
                raise self.refuse(f"expected Tree={len(trees)}, got {_show(line)}")
            if len(trees) >= MAX_TREES:
                raise self.refuse(f"more than {MAX_TREES} trees")
            starts.append(self.i)
            self.i += 1
            trees.append(self.tree(len(trees), num_features))
            self.skip_blank()
        starts.append(self.i)
        offsets = self._byte_offsets(starts[0], self.i)
        for a, b in itertools.pairwise(starts):
            sizes.append(offsets[b] - offsets[a])
        self.i += 1  # 'end of trees'
        return trees, sizes

    def _byte_offsets(self, first: int, last: int) -> dict[int, int]:
        out: dict[int, int] = {}
        pos = 0
        for k in range(first, last + 1):
            out[k] = pos
            if k < last:
                line = self.lines[k]
                if not line.isascii():
                    raise _Refused(k + 1, "a tree block holds non-ASCII text")
                pos += len(line) + 1
        return out

    def tree(self, index: int, num_features: int) -> _Tree:
        fields: dict[str, str] = {}
        where: dict[str, int] = {}
        while True:
            line = self.peek()
            if line is None:
                raise self.refuse(f"tree {index} is truncated (its block does not end)")
            if line == "":
                break
            key, sep, value = line.partition("=")
            if not sep:
                raise self.refuse(f"tree {index}: expected key=value, got {_show(line)}")
            if key not in _TREE_KEYS:
                raise self.refuse(f"tree {index}: unknown key {_show(key)}")
            if key in fields:
                raise self.refuse(f"tree {index}: {key} appears twice")
            fields[key] = value
            where[key] = self.i + 1
            self.i += 1
        block_end = self.i + 1
        return _TreeReader(index, fields, where, block_end, num_features).read()

    # -- after the trees ---------------------------------------------------------------------

    def tail(self, names: tuple[str, ...]) -> None:
        self.skip_blank()
        if self.peek() != "feature_importances:":
            raise self.refuse("expected the 'feature_importances:' section after the trees")
        self.i += 1
        known = set(names)
        while (line := self.peek()) not in (None, ""):
            name, sep, count = line.rpartition("=")
            if not sep or name not in known or not re.fullmatch(r"\d+", count):
                raise self.refuse(
                    f"expected feature=count in feature_importances, got {_show(line)}"
                )
            self.i += 1
        self.skip_blank()
        if self.peek() != "parameters:":
            raise self.refuse("expected the 'parameters:' section")
        self.i += 1
        while (line := self.peek()) != "end of parameters":
            if line is None:
                raise self.refuse("the model text is truncated ('end of parameters' is missing)")
            if line and not _PARAMETER.fullmatch(line):
                raise self.refuse(f"expected [name: value] in parameters, got {_show(line)}")
            self.i += 1
        self.i += 1
        self.skip_blank()
        if self.peek() == "parser:":
            self.i += 1
            while self.peek() != "end of parser":
                if self.peek() is None:
                    raise self.refuse("the model text is truncated ('end of parser' is missing)")
                self.i += 1
            self.i += 1
            self.skip_blank()
        line = self.peek()
        if line is not None and line.startswith("pandas_categorical:"):
            try:
                value = json.loads(line[len("pandas_categorical:") :])
            except (ValueError, RecursionError):
                raise self.refuse("pandas_categorical is not valid JSON") from None
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, list) for v in value)
            ):
                raise self.refuse("pandas_categorical must be null or a list of lists")
            self.i += 1
            self.skip_blank()
        if self.peek() is not None:
            raise self.refuse(f"unexpected text after the model: {_show(self.peek() or '')}")


class _TreeReader:
    """Checks one tree block's fields against each other and builds the `_Tree`."""

    def __init__(
        self,
        index: int,
        fields: dict[str, str],
        where: dict[str, int],
        block_end: int,
        num_features: int,
    ) -> None:
        self.index = index
        self.fields = fields
        self.where = where
        self.block_end = block_end
        self.num_features = num_features

    def refuse(self, key: str | None, message: str) -> _Refused:
        line = self.where.get(key, self.block_end) if key else self.block_end
        return _Refused(line, f"tree {self.index}: {message}")

    def integer(self, key: str, lo: int, hi: int) -> int:
        if key not in self.fields:
            raise self.refuse(None, f"{key} is missing")
        value = self.fields[key]
        if not re.fullmatch(_INT, value):
            raise self.refuse(key, f"{key} must be an integer, got {_show(value)}")
        number = int(value)
        if not lo <= number <= hi:
            raise self.refuse(key, f"{key}={number} is outside [{lo}, {hi}]")
        return number

    def array(
        self,
        key: str,
        count: int | None,
        pattern: re.Pattern[str],
        convert: Callable[[str], T],
        *,
        required: bool = True,
        allow_empty: bool = False,
    ) -> list[T]:
        """The values of `key`: exactly `count` of them (None: any number), each matching
        `pattern`. A missing optional key gives []."""
        if key not in self.fields:
            if required:
                raise self.refuse(None, f"{key} is missing")
            return []
        value = self.fields[key]
        if not pattern.fullmatch(value):
            raise self.refuse(key, f"{key} holds something other than numbers: {_show(value)}")
        values = [convert(v) for v in value.split()]
        if count is not None and len(values) != count and not (allow_empty and not values):
            raise self.refuse(key, f"{key} has {len(values)} values, expected {count}")
        return values

    def ints(self, key: str, count: int | None, bounds: tuple[int, int], **kw: bool) -> list[int]:
        values = self.array(
            key, count, _SPACED_INTS if kw.pop("spaced", False) else _INTS, int, **kw
        )
        lo, hi = bounds
        for v in values:
            if not lo <= v <= hi:
                raise self.refuse(key, f"{key} holds {v}, outside [{lo}, {hi}]")
        return values

    def floats(self, key: str, count: int | None, *, finite: bool, **kw: bool) -> list[float]:
        if finite:
            pattern = _SPACED_FLOATS if kw.pop("spaced", False) else _FLOATS
        else:
            pattern = _LOOSE_FLOATS
        values = self.array(key, count, pattern, float, **kw)
        if finite and not all(math.isfinite(v) for v in values):
            raise self.refuse(key, f"{key} holds a value too large for a double")
        return values

    def thresholds(self, count: int, *, required: bool) -> list[float]:
        """Split thresholds: LightGBM writes +-inf for a split that only separates missing
        values; NaN (every comparison false) and numbers too large for a double are refused."""
        values = self.floats("threshold", count, finite=False, required=required)
        for v, token in zip(values, self.fields.get("threshold", "").split(), strict=True):
            if math.isnan(v):
                raise self.refuse("threshold", "threshold holds NaN")
            if math.isinf(v) and token not in ("inf", "-inf"):
                raise self.refuse("threshold", f"threshold {token} is too large for a double")
        return values

    def read(self) -> _Tree:
        num_leaves = self.integer("num_leaves", 1, MAX_LEAVES_PER_TREE)
        num_cat = self.integer("num_cat", 0, max(num_leaves - 1, 0))
        is_linear = self.integer("is_linear", 0, 1) == 1 if "is_linear" in self.fields else False
        internal = num_leaves - 1
        # LightGBM reads no node array of a one-leaf tree unless the tree is linear.
        single = num_leaves == 1 and not is_linear
        leaf_value = self.floats("leaf_value", num_leaves, finite=True)
        if "shrinkage" in self.fields:
            self.floats("shrinkage", 1, finite=True)
        # A single-leaf tree is written with empty node arrays and, sometimes, empty leaf
        # statistics; LightGBM reads none of them.
        self.floats("leaf_weight", num_leaves, finite=False, required=False, allow_empty=single)
        self.ints("leaf_count", num_leaves, _COUNT, required=False, allow_empty=single)
        split_feature = self.ints(
            "split_feature", internal, (0, self.num_features - 1), required=not single
        )
        threshold = self.thresholds(internal, required=not single)
        decision_type = self.ints("decision_type", internal, _INT8, required=False)
        if not decision_type:
            decision_type = [0] * internal
        left = self.ints("left_child", internal, _INT32, required=not single)
        right = self.ints("right_child", internal, _INT32, required=not single)
        self.floats("split_gain", internal, finite=False, required=False)
        self.floats("internal_value", internal, finite=False, required=False)
        self.floats("internal_weight", internal, finite=False, required=False)
        self.ints("internal_count", internal, _COUNT, required=False)
        if num_leaves == 1:
            # Node arrays of a one-leaf tree are empty or ignored by LightGBM; hold them empty.
            split_feature, threshold, decision_type, left, right = [], [], [], [], []
        self.check_structure(internal, num_leaves, left, right)
        cat_boundaries: list[int] = []
        cat_threshold: list[int] = []
        if num_cat > 0:
            cat_boundaries = self.ints("cat_boundaries", num_cat + 1, (0, _INT32[1]))
            if cat_boundaries[0] != 0 or any(b < a for a, b in itertools.pairwise(cat_boundaries)):
                raise self.refuse(
                    "cat_boundaries", "cat_boundaries must start at 0 and never decrease"
                )
            cat_threshold = self.ints("cat_threshold", cat_boundaries[-1], _UINT32)
        else:
            for key in ("cat_boundaries", "cat_threshold"):
                if key in self.fields:
                    raise self.refuse(key, f"{key} is present but num_cat=0")
        for n, dt in enumerate(decision_type):
            if dt < 0 or dt >= 16:
                raise self.refuse("decision_type", f"node {n} has decision_type {dt}")
            if dt & _CATEGORICAL_MASK:
                thr = threshold[n]
                if thr != int(thr) or not 0 <= int(thr) < num_cat:
                    raise self.refuse(
                        "threshold",
                        f"categorical node {n} points to bitset {thr:g}; num_cat={num_cat}",
                    )
            elif (dt >> 2) & 3 > _MISSING_NAN:
                raise self.refuse("decision_type", f"node {n} has an unknown missing type")
        if is_linear:
            self.linear(num_leaves)
        else:
            for key in ("leaf_const", "num_features", "leaf_features", "leaf_coeff"):
                if key in self.fields:
                    raise self.refuse(key, f"{key} is present in a tree that is not linear")
        return _Tree(
            num_leaves=num_leaves,
            split_feature=split_feature,
            threshold=threshold,
            decision_type=decision_type,
            left_child=left,
            right_child=right,
            leaf_value=leaf_value,
            cat_boundaries=cat_boundaries,
            cat_threshold=cat_threshold,
            is_linear=is_linear,
        )

    def check_structure(
        self, internal: int, num_leaves: int, left: list[int], right: list[int]
    ) -> None:
        """Children >= 0 name internal nodes, < 0 leaves (~child); from the root, node 0,
        every node and every leaf must be reached exactly once (so there is no cycle)."""
        if internal == 0:
            return
        seen_nodes = [False] * internal
        seen_leaves = [False] * num_leaves
        seen_nodes[0] = True
        stack = [0]
        while stack:
            node = stack.pop()
            for key, child in (("left_child", left[node]), ("right_child", right[node])):
                if child >= 0:
                    if child >= internal:
                        raise self.refuse(key, f"node {node} points to node {child} of {internal}")
                    if seen_nodes[child]:
                        raise self.refuse(key, f"node {child} is reached twice (not a tree)")
                    seen_nodes[child] = True
                    stack.append(child)
                else:
                    leaf = ~child
                    if leaf >= num_leaves:
                        raise self.refuse(key, f"node {node} points to leaf {leaf} of {num_leaves}")
                    if seen_leaves[leaf]:
                        raise self.refuse(key, f"leaf {leaf} is reached twice (not a tree)")
                    seen_leaves[leaf] = True
        if not all(seen_nodes):
            raise self.refuse("left_child", f"node {seen_nodes.index(False)} is never reached")
        if not all(seen_leaves):
            raise self.refuse("left_child", f"leaf {seen_leaves.index(False)} is never reached")

    def linear(self, num_leaves: int) -> None:
        self.floats("leaf_const", num_leaves, finite=True)
        counts = self.ints("num_features", num_leaves, (0, self.num_features))
        total = sum(counts)
        self.ints("leaf_features", total, (0, self.num_features - 1), spaced=True)
        self.floats("leaf_coeff", total, finite=True, spaced=True)


def _show(text: str, limit: int = 60) -> str:
    """A short, printable quotation of part of a line for an error message."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return repr(clean + ("..." if len(text) > limit else ""))


def iter_tree_lines(model_text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every line inside a Tree= block; used by tests to pick
    fields to corrupt."""
    inside = False
    for n, line in enumerate(model_text.split("\n"), start=1):
        if line.startswith("Tree="):
            inside = True
        elif line == "end of trees":
            inside = False
        elif inside and "=" in line:
            yield n, line
