"""Model bundles: a LightGBM text model plus a schema saying where each feature comes from.

A bundle is a folder:

    model.txt     LightGBM text model (`Booster.save_model`)
    schema.json   {"format": 1,
                   "model_version": "rewards-2026-11-26",          (optional; default: hash)
                   "features": [{"name": "u_age", "source": "user"},
                                {"name": "i_price", "source": "item", "default": 0.0},
                                {"name": "hour", "source": "context", "default": 12},
                                {"name": "q_match", "source": "inline"}],
                   "prior": "i_popularity",                        (optional item feature)
                   "output_index": 0}                              (optional; multiclass)

`features` lists every model feature in model order with the same names as the model. Sources:
`user` and `item` come from the feature store (the store column of the same name, or `column`),
`context` from the request's context map, `inline` from the candidates' inline values; `item`
features may be sent inline too, and inline values win. `default` (a number, or null for NaN,
the default) fills a value whose entity is unknown or that the request did not send: NaN lets
LightGBM apply the missing-value branch it learned, so nothing is silently zero.

The schema is validated by pydantic models (`_Schema`, `_FeatureEntry`); a refusal names the
field (`features[3] (u_age): source must be one of ...`). The model text is parsed in full by
`model_text.parse_model_text` and hashed once per load (`Bundle.model_hash`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from ranking.errors import BundleError
from ranking.scoring.model_text import parse_model_text

__all__ = ["SOURCES", "Bundle", "FeatureSpec", "load_bundle", "write_bundle"]

SOURCES = ("user", "item", "context", "inline")
MODEL_FILE = "model.txt"
SCHEMA_FILE = "schema.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    source: str
    default: float = math.nan
    column: str = ""  # store column; "" means the feature's own name

    @property
    def store_column(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class Bundle:
    """A validated bundle, ready to build a scorer from."""

    path: Path | None
    model_text: str
    model_hash: str
    version: str
    features: tuple[FeatureSpec, ...]
    prior: str | None = None
    output_index: int = 0

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def defaults(self) -> npt.NDArray[np.float64]:
        return np.array([f.default for f in self.features], dtype=np.float64)

    def positions(self, source: str) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.source == source]


class _FeatureEntry(BaseModel):
    """One entry of schema.json's `features`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr
    source: Literal["user", "item", "context", "inline"]
    default: float = math.nan
    column: StrictStr = ""

    @field_validator("default", mode="before")
    @classmethod
    def _number_or_null(cls, raw: Any) -> float:
        if raw is None or raw == "NaN" or raw == "nan":
            return math.nan
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"default must be a number or null, got {raw!r}")
        if math.isinf(raw) or (isinstance(raw, int) and abs(raw) > 1e308):
            raise ValueError("default must be finite or null (NaN)")
        return float(raw)


class _Schema(BaseModel):
    """schema.json. Keys beside these are ignored (room for notes); a feature's are not."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: Literal[1] = 1
    model_version: StrictStr | None = None
    features: list[_FeatureEntry] = Field(min_length=1)
    prior: StrictStr | None = None
    output_index: StrictInt = Field(default=0, ge=0)


def _schema_problem(error: ErrorDetails, schema: Any) -> str:
    """One pydantic error as a sentence naming the field, e.g. `features[3] (u_age): source
    must be one of user, item, context, inline`."""
    loc = error["loc"]
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    if len(loc) >= 2 and loc[0] == "features" and isinstance(loc[1], int):
        raw = schema.get("features", [])[loc[1]] if isinstance(schema, dict) else None
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            where = f"features[{loc[1]}] ({raw['name']})" + where[len(f"features[{loc[1]}]") :]
    kind, field = error["type"], loc[-1] if loc else ""
    if kind == "extra_forbidden":
        return f"{where.rsplit('.', 1)[0]}: unknown keys [{field!r}]"
    if kind == "missing":
        return f"{where}: required"
    if kind == "literal_error" and field == "source":
        return f"{where}: source must be one of {', '.join(SOURCES)}"
    if kind == "literal_error" and field == "format":
        return f"{where}: unsupported format {error.get('input')!r}"
    if kind == "too_short" and field == "features":
        return "'features' must be a non-empty list"
    if kind == "model_type" and not loc:
        return "must be a JSON object"
    if kind == "value_error":
        return f"{where}: {error['ctx']['error']}"
    return f"{where}: {error['msg']}"


def parse_bundle(model_text: str, schema: Any, path: Path | None = None) -> Bundle:
    """Validate a model text and a parsed schema; raise BundleError naming what is wrong.

    The model text is parsed in full (`model_text.parse_model_text`), so a Bundle only ever
    holds text that LightGBM's native loader can be given safely.
    """
    where = str(path) if path else "bundle"
    model_hash = hashlib.sha256(model_text.encode("utf-8", "surrogatepass")).hexdigest()
    try:
        model = parse_model_text(model_text, model_hash)
    except BundleError as exc:
        raise BundleError(f"{where}/{MODEL_FILE}: {exc.message}") from None
    model_names = list(model.feature_names)
    try:
        parsed = _Schema.model_validate(schema)
    except ValidationError as exc:
        problem = _schema_problem(exc.errors()[0], schema)
        raise BundleError(f"{where}/{SCHEMA_FILE}: {problem}") from None
    specs = [FeatureSpec(f.name, f.source, f.default, f.column) for f in parsed.features]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BundleError(f"{where}/{SCHEMA_FILE}: duplicate feature names {dup}")
    if names != model_names:
        if len(names) != len(model_names):
            raise BundleError(
                f"{where}: schema lists {len(names)} features, the model has {len(model_names)}"
            )
        first = next(i for i, (a, b) in enumerate(zip(names, model_names, strict=True)) if a != b)
        raise BundleError(
            f"{where}: feature {first} is {names[first]!r} in the schema but "
            f"{model_names[first]!r} in the model; list features in model order"
        )
    prior = parsed.prior
    if prior is not None and not any(s.name == prior and s.source == "item" for s in specs):
        raise BundleError(f"{where}/{SCHEMA_FILE}: prior {prior!r} is not an item feature")
    num_class = model.num_class
    if parsed.output_index >= num_class:
        raise BundleError(f"{where}/{SCHEMA_FILE}: output_index must be in [0, {num_class})")
    version = parsed.model_version or f"sha256:{model_hash[:12]}"
    return Bundle(path, model_text, model_hash, version, tuple(specs), prior, parsed.output_index)


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate the bundle in folder `path`."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: bundle folder not found")
    try:
        model_text = (folder / MODEL_FILE).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder}/{MODEL_FILE}: cannot read ({type(exc).__name__})") from exc
    try:
        schema = json.loads((folder / SCHEMA_FILE).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder}/{SCHEMA_FILE}: cannot read ({type(exc).__name__})") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{folder}/{SCHEMA_FILE}: invalid JSON at line {exc.lineno}") from exc
    return parse_bundle(model_text, schema, folder)


def write_bundle(
    folder: str | Path,
    model_text: str,
    features: list[FeatureSpec],
    *,
    version: str | None = None,
    prior: str | None = None,
) -> Bundle:
    """Write a bundle atomically enough for a watcher: schema first, model last."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    schema: dict[str, Any] = {"format": FORMAT, "features": []}
    if version:
        schema["model_version"] = version
    if prior:
        schema["prior"] = prior
    for f in features:
        entry: dict[str, Any] = {"name": f.name, "source": f.source}
        if not math.isnan(f.default):
            entry["default"] = f.default
        if f.column:
            entry["column"] = f.column
        schema["features"].append(entry)
    bundle = parse_bundle(model_text, schema, out)
    tmp = out / f".{SCHEMA_FILE}.tmp"
    tmp.write_text(json.dumps(schema, indent=1) + "\n")
    tmp.replace(out / SCHEMA_FILE)
    tmp = out / f".{MODEL_FILE}.tmp"
    tmp.write_text(model_text)
    tmp.replace(out / MODEL_FILE)
    return bundle
