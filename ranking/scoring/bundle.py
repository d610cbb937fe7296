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
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ranking.errors import BundleError

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


def _model_header(model_text: str) -> dict[str, str]:
    header: dict[str, str] = {}
    for line in model_text.splitlines():
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
    return header


def _parse_default(raw: Any, where: str) -> float:
    if raw is None or raw == "NaN" or raw == "nan":
        return math.nan
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise BundleError(f"{where}: default must be a number or null, got {raw!r}")
    value = float(raw)
    if math.isinf(value):
        raise BundleError(f"{where}: default must be finite or null (NaN)")
    return value


def parse_bundle(model_text: str, schema: Any, path: Path | None = None) -> Bundle:
    """Validate a model text and a parsed schema; raise BundleError naming what is wrong."""
    where = str(path) if path else "bundle"
    header = _model_header(model_text)
    if header.get("version") is None or "Tree=0" not in model_text:
        raise BundleError(f"{where}/{MODEL_FILE}: not a LightGBM text model (no trees)")
    model_names = header.get("feature_names", "").split()
    if not model_names:
        raise BundleError(f"{where}/{MODEL_FILE}: the model has no feature_names line")
    if not isinstance(schema, dict):
        raise BundleError(f"{where}/{SCHEMA_FILE}: must be a JSON object")
    if schema.get("format", FORMAT) != FORMAT:
        raise BundleError(f"{where}/{SCHEMA_FILE}: unsupported format {schema.get('format')!r}")
    raw_features = schema.get("features")
    if not isinstance(raw_features, list) or not raw_features:
        raise BundleError(f"{where}/{SCHEMA_FILE}: 'features' must be a non-empty list")
    specs: list[FeatureSpec] = []
    for i, raw in enumerate(raw_features):
        fw = f"{where}/{SCHEMA_FILE}: features[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BundleError(f"{fw}: each feature needs a string 'name'")
        unknown = set(raw) - {"name", "source", "default", "column"}
        if unknown:
            raise BundleError(f"{fw} ({raw['name']}): unknown keys {sorted(unknown)}")
        source = raw.get("source")
        if source not in SOURCES:
            raise BundleError(f"{fw} ({raw['name']}): source must be one of {', '.join(SOURCES)}")
        column = raw.get("column", "")
        if not isinstance(column, str):
            raise BundleError(f"{fw} ({raw['name']}): column must be a string")
        specs.append(
            FeatureSpec(raw["name"], source, _parse_default(raw.get("default"), fw), column)
        )
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
    prior = schema.get("prior")
    if prior is not None and not any(s.name == prior and s.source == "item" for s in specs):
        raise BundleError(f"{where}/{SCHEMA_FILE}: prior {prior!r} is not an item feature")
    num_class = int(header.get("num_class", "1") or 1)
    output_index = schema.get("output_index", 0)
    if not isinstance(output_index, int) or not 0 <= output_index < max(num_class, 1):
        raise BundleError(f"{where}/{SCHEMA_FILE}: output_index must be in [0, {num_class})")
    model_hash = hashlib.sha256(model_text.encode()).hexdigest()
    version = schema.get("model_version") or f"sha256:{model_hash[:12]}"
    if not isinstance(version, str):
        raise BundleError(f"{where}/{SCHEMA_FILE}: model_version must be a string")
    return Bundle(path, model_text, model_hash, version, tuple(specs), prior, output_index)


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
