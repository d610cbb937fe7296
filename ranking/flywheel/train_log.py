"""`ranking train --log DIR --labels FILE --out BUNDLE`: retrain on exactly what was served.

1. Read every complete log file under DIR (hidden temporary files are skipped). Files written
   for a model with other features than the newest file's are left out (and counted).
2. Join outcome labels (CSV or Parquet with `request_id`, `item_id` and `label`: integer grades
   0..30, one row per pair; a logged row without a label is 0: not engaged).
3. Group rows by request, order requests by time and hold out the latest `valid_fraction` of
   them (a time-based split: the model is judged on requests later than any it learned from).
4. Train LambdaRank on the logged feature columns, the very values the served model scored,
   so there is no training/serving skew by construction, and write a bundle whose schema is the
   served one (sources, defaults, prior from the log's metadata) plus `reference.json` (the
   training rows' distribution, for drift monitoring).
5. Report NDCG@10 on the held-out requests of the new model and of what was served (ranked by
   the logged positions), computed by `ranking.train.ndcg_at_k`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ranking.flywheel.logwriter import FEATURES_KEY, feature_column
from ranking.flywheel.reference import build_reference, write_reference
from ranking.scoring.bundle import FeatureSpec, write_bundle
from ranking.train import (
    MAX_LABEL,
    RankingData,
    TqdmCallback,
    TrainDataError,
    TrainParams,
    ndcg_at_k,
)

__all__ = ["LogTrainReport", "ServedLog", "read_log", "train_from_log"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ServedLog:
    """The rows of a log folder that share the newest file's feature schema."""

    table: Any  # pyarrow.Table
    specs: tuple[FeatureSpec, ...]
    prior: str | None
    files: int
    skipped_files: int

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def matrix(self, table: Any | None = None) -> npt.NDArray[np.float64]:
        """The feature columns of `table` (default: all rows) in model order, float64."""
        t = self.table if table is None else table
        out = np.empty((t.num_rows, len(self.specs)), dtype=np.float64)
        for j, spec in enumerate(self.specs):
            out[:, j] = t.column(feature_column(spec.name)).to_numpy(zero_copy_only=False)
        return out


def log_files(folder: Path) -> list[Path]:
    """Complete log files under `folder`: `*.parquet`, no hidden part in the path."""
    root = Path(folder)
    return sorted(
        p
        for p in root.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    )


def _specs(metadata: bytes) -> tuple[tuple[FeatureSpec, ...], str | None]:
    data = json.loads(metadata)
    specs = tuple(
        FeatureSpec(
            f["name"],
            f["source"],
            float(f["default"]) if f.get("default") is not None else float("nan"),
            f.get("column", ""),
        )
        for f in data["features"]
    )
    return specs, data.get("prior")


def read_log(folder: Path) -> ServedLog:
    """Read a served-feature log folder; raises TrainDataError when there is nothing usable."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = log_files(folder)
    if not files:
        raise TrainDataError(f"{folder}: no complete log files (*.parquet) found")
    tables = []
    for path in files:
        try:
            tables.append(pq.ParquetFile(path).read())
        except (OSError, pa.ArrowInvalid) as exc:
            raise TrainDataError(f"{path}: cannot read: {exc}") from exc
    keyed = [(t.schema.metadata or {}).get(FEATURES_KEY) for t in tables]
    newest = max(
        (i for i in range(len(tables)) if keyed[i] and tables[i].num_rows),
        key=lambda i: pc.max(tables[i].column("timestamp")).value,
        default=None,
    )
    if newest is None:
        raise TrainDataError(f"{folder}: the log files hold no rows with a feature schema")
    key = keyed[newest]
    assert key is not None
    chosen = [t for t, k in zip(tables, keyed, strict=True) if k == key]
    table = pa.concat_tables(chosen, promote_options="default")
    specs, prior = _specs(key)
    return ServedLog(table, specs, prior, len(chosen), len(tables) - len(chosen))


def read_labels(path: Path) -> Any:
    """The labels table (request_id, item_id: string; label: float64), checked."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            opts = pa_csv.ConvertOptions(
                column_types={"request_id": pa.string(), "item_id": pa.string()}
            )
            table = pa_csv.read_csv(path, convert_options=opts)
    except (OSError, pa.ArrowInvalid) as exc:
        raise TrainDataError(f"{path}: cannot read: {exc}") from exc
    for col in ("request_id", "item_id", "label"):
        if col not in table.column_names:
            raise TrainDataError(f"{path}: no {col!r} column (columns: {table.column_names})")
    try:
        label = pc.cast(table.column("label"), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TrainDataError(f"{path}: column 'label' must be numeric") from exc
    values = label.to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(values) | (values < 0) | (values > MAX_LABEL) | (values != np.floor(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TrainDataError(
            f"{path}: row {row}: label {values[row]!r} is not an integer grade 0..{MAX_LABEL}"
        )
    out = pa.table(
        {
            "request_id": pc.cast(table.column("request_id"), pa.string()),
            "item_id": pc.cast(table.column("item_id"), pa.string()),
            "label": label,
        }
    )
    counts = out.group_by(["request_id", "item_id"]).aggregate([("label", "count")])
    dup = counts.filter(pc.greater(counts.column("label_count"), 1))
    if dup.num_rows:
        first = dup.slice(0, 1).to_pylist()[0]
        raise TrainDataError(
            f"{path}: more than one label for request_id {first['request_id']!r}, "
            f"item_id {first['item_id']!r}"
        )
    return out


@dataclass(frozen=True, eq=False)
class LogTrainReport:
    out: Path
    version: str
    rows: int
    labelled_rows: int
    n_train_requests: int
    n_valid_requests: int
    ndcg_new: float
    ndcg_served: float
    served_versions: tuple[str, ...]
    skipped_files: int
    seconds: float

    def __str__(self) -> str:
        lines = [
            f"bundle     {self.out} (model_version {self.version})",
            f"log        {self.rows} rows ({self.labelled_rows} labelled), "
            f"{self.n_train_requests} train + {self.n_valid_requests} held-out requests "
            "(the latest by time)",
            f"NDCG@10    new model {self.ndcg_new:.4f}",
            f"NDCG@10    served    {self.ndcg_served:.4f} "
            f"({', '.join(self.served_versions)}, as ranked) on the same held-out requests",
            f"trained in {self.seconds:.1f} s",
        ]
        if self.skipped_files:
            lines.append(f"skipped    {self.skipped_files} log files of models with other features")
        return "\n".join(lines)


def _requests(table: Any) -> npt.NDArray[np.int64]:
    """Rows per request of a table sorted by (timestamp, request_id, position)."""
    import pyarrow.compute as pc

    codes = pc.dictionary_encode(table.column("request_id")).combine_chunks().indices
    codes = codes.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    return np.diff(np.append(starts, codes.shape[0])).astype(np.int64)


def train_from_log(
    log_dir: Path,
    labels: Path,
    out: Path,
    *,
    params: TrainParams | None = None,
    version: str | None = None,
    progress: bool = True,
) -> LogTrainReport:
    """Train a bundle from a served-feature log and outcome labels (see the module docstring).

    `params` are `ranking.train.TrainParams` (its defaults when None); `valid_fraction` is the
    share of the latest requests held out.
    """
    import lightgbm as lgb
    import pyarrow.compute as pc

    started = time.perf_counter()
    p = params or TrainParams()
    valid_fraction = p.valid_fraction
    if not 0.0 < valid_fraction < 1.0:
        raise TrainDataError("valid_fraction must be in (0, 1) for a time-based split")
    served = read_log(log_dir)
    outcomes = read_labels(labels)
    keep = ["request_id", "timestamp", "item_id", "position", "model_version"]
    keep += [feature_column(n) for n in served.feature_names]
    table = served.table.select(keep).join(
        outcomes, keys=["request_id", "item_id"], join_type="left outer"
    )
    labelled = int(table.column("label").null_count)
    labelled = table.num_rows - labelled
    table = table.sort_by(
        [("timestamp", "ascending"), ("request_id", "ascending"), ("position", "ascending")]
    )
    label = pc.fill_null(table.column("label"), 0.0).to_numpy(zero_copy_only=False)
    sizes = _requests(table)
    n_req = int(sizes.shape[0])
    n_valid = max(1, round(valid_fraction * n_req))
    if n_req - n_valid < 1:
        raise TrainDataError(
            f"{log_dir}: {n_req} logged requests are too few to hold {n_valid} out"
        )
    data = RankingData(served.matrix(table), label.astype(np.float64), sizes, served.feature_names)
    train = data.take_queries(np.arange(n_req - n_valid))
    heldout = data.take_queries(np.arange(n_req - n_valid, n_req))
    split_row = int(sizes[: n_req - n_valid].sum())
    held_table = table.slice(split_row)

    names = list(served.feature_names)
    lgb_params = p.lightgbm_params()
    train_set = lgb.Dataset(
        train.features, train.labels, group=train.group_sizes, feature_name=names
    )
    with tqdm(
        total=p.trees, desc="training", unit="tree", file=sys.stderr, disable=not progress
    ) as bar:
        booster = lgb.train(
            lgb_params, train_set, num_boost_round=p.trees, callbacks=[TqdmCallback(bar)]
        )
    predicted = booster.predict(heldout.features, raw_score=True)
    ndcg_new = ndcg_at_k(predicted, heldout.labels, heldout.group_sizes, 10)
    positions = held_table.column("position").to_numpy(zero_copy_only=False)
    ndcg_served = ndcg_at_k(-positions.astype(np.float64), heldout.labels, heldout.group_sizes, 10)
    served_versions = tuple(
        sorted(str(v) for v in pc.unique(held_table.column("model_version")).to_pylist())
    )

    version = version or time.strftime("fromlog-%Y%m%dT%H%M%SZ", time.gmtime())
    prior = served.prior if served.prior in names else None
    # Reference first: a server watching `out` reloads once model.txt lands and finds it there.
    write_reference(out, build_reference(train.features, names))
    write_bundle(out, booster.model_to_string(), list(served.specs), version=version, prior=prior)
    return LogTrainReport(
        out=Path(out),
        version=version,
        rows=table.num_rows,
        labelled_rows=labelled,
        n_train_requests=n_req - n_valid,
        n_valid_requests=n_valid,
        ndcg_new=ndcg_new,
        ndcg_served=ndcg_served,
        served_versions=served_versions,
        skipped_files=served.skipped_files,
        seconds=time.perf_counter() - started,
    )
