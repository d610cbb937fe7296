"""`ranking train`: LETOR / CSV / Parquet in, a valid bundle and a held-out NDCG@10 out."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from ranking.demo.world import make_world
from ranking.scoring.bundle import load_bundle
from ranking.train import (
    TrainDataError,
    TrainParams,
    TrainReport,
    load_ranking_data,
    ndcg_at_k,
    train_command,
)
from tests.paths import LETOR

TRAIN = LETOR / "rank.train"
FAST = {"trees": 10, "leaves": 7, "num_threads": 1, "progress": False}
LGB = {"objective": "lambdarank", "verbosity": -1, "num_threads": 1, "deterministic": True}
LGB |= {"force_row_wise": True, "seed": 0}


def test_letor_reads_like_lightgbm() -> None:
    """Same matrix as LightGBM's own reader: the two models predict identically."""
    data = load_ranking_data(TRAIN)
    assert data.features.shape == (3005, 301) and data.n_queries == 201
    assert data.feature_names[0] == "f0" and data.feature_names[-1] == "f300"
    assert data.group_sizes.sum() == 3005
    params = {**LGB, "num_leaves": 7}
    from_file = lgb.train(params, lgb.Dataset(str(TRAIN)), num_boost_round=5)
    ours = lgb.train(
        params, lgb.Dataset(data.features, data.labels, group=data.group_sizes), num_boost_round=5
    )
    np.testing.assert_array_equal(from_file.predict(data.features), ours.predict(data.features))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ndcg_matches_lightgbm_metric_with_ties(k: int) -> None:
    """Scores with many ties go in as init_score of a model that cannot split: LightGBM's
    ndcg@k of its (shifted) scores must equal ours."""
    data = load_ranking_data(TRAIN)
    scores = np.random.default_rng(k).integers(0, 3, data.labels.shape[0]).astype(np.float64)
    ds = lgb.Dataset(data.features, data.labels, group=data.group_sizes, init_score=scores)
    evals: dict[str, dict[str, list[float]]] = {}
    params = {**LGB, "metric": "ndcg", "eval_at": [k], "min_data_in_leaf": 10**6}
    lgb.train(
        params,
        ds,
        num_boost_round=1,
        valid_sets=[ds],
        valid_names=["all"],
        callbacks=[lgb.record_evaluation(evals)],
    )
    expected = evals["all"][f"ndcg@{k}"][-1]
    assert ndcg_at_k(scores, data.labels, data.group_sizes, k) == pytest.approx(expected, abs=1e-12)


def test_ndcg_edge_cases() -> None:
    # No relevant document: 1 (LightGBM's convention). Perfect order: 1. Reversed: < 1.
    assert ndcg_at_k([3.0, 2.0], [0, 0], [2]) == 1.0
    assert ndcg_at_k([3.0, 2.0, 1.0], [2, 1, 0], [3]) == 1.0
    worst = ndcg_at_k([1.0, 2.0, 3.0], [2, 1, 0], [3])
    assert worst == pytest.approx((1 / math.log2(3) + 3 / math.log2(4)) / (3 + 1 / math.log2(3)))
    # Ties keep input order; k cuts the list.
    assert ndcg_at_k([1.0, 1.0], [0, 1], [2], k=1) == 0.0


def test_train_letor(tmp_path: Path) -> None:
    report = train_command(TRAIN, None, tmp_path / "bundle", **FAST)
    assert isinstance(report, TrainReport)
    assert (report.n_rows, report.n_features) == (3005, 301)
    assert (report.n_train_queries, report.n_valid_queries) == (161, 40)
    bundle = load_bundle(tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["model.txt", "schema.json"]
    assert bundle.feature_names == tuple(f"f{j}" for j in range(301))
    assert {f.source for f in bundle.features} == {"inline"}
    assert report.bundle.model_hash == bundle.model_hash

    held = report.heldout
    assert held is not None and held.n_queries == 40
    assert held.group_sizes.sum() == held.labels.shape[0] == held.features.shape[0]
    booster = lgb.Booster(model_str=bundle.model_text)
    predicted = booster.predict(held.features, raw_score=True)
    assert report.ndcg_at_10 == ndcg_at_k(predicted, held.labels, held.group_sizes)
    assert report.lightgbm_ndcg_at_10 is not None and report.ndcg_at_10 is not None
    assert report.ndcg_at_10 == pytest.approx(report.lightgbm_ndcg_at_10, abs=1e-12)
    assert report.ndcg_at_10 > ndcg_at_k(np.zeros(len(held.labels)), held.labels, held.group_sizes)
    text = str(report)
    assert "NDCG@10" in text and "161 train, 40 held out" in text and "301 inline" in text

    # Same seed, same split and model; the split is whole queries only.
    again = train_command(TRAIN, None, tmp_path / "again", **FAST)
    assert again.bundle.model_hash == report.bundle.model_hash


def test_query_file_is_found_or_given(tmp_path: Path) -> None:
    data = tmp_path / "docs.txt"
    shutil.copy(TRAIN, data)
    with pytest.raises(TrainDataError, match=r"docs\.txt: no query groups.*docs\.txt\.query"):
        load_ranking_data(data)
    shutil.copy(TRAIN.with_name("rank.train.query"), tmp_path / "groups")
    assert load_ranking_data(data, tmp_path / "groups").n_queries == 201
    shutil.copy(TRAIN.with_name("rank.train.query"), tmp_path / "docs.txt.query")
    assert load_ranking_data(data).n_queries == 201


def test_qid_tokens(tmp_path: Path) -> None:
    data = tmp_path / "qid.txt"
    data.write_text("2 qid:7 0:1.5 3:2\n0 qid:7 1:0.5 # comment\n\n1 qid:3 2:1\n")
    loaded = load_ranking_data(data)
    assert loaded.group_sizes.tolist() == [2, 1]
    np.testing.assert_array_equal(loaded.features, [[1.5, 0, 0, 2], [0, 0.5, 0, 0], [0, 0, 1, 0]])
    assert loaded.labels.tolist() == [2, 0, 1]


def _world_table(n_queries: int = 60) -> pa.Table:
    """Demo-world rows with a group column, a label, u_/i_/c_ features, an inline feature and a
    string id column; some values null."""
    world = make_world(100, 800, seed=2)
    sample = world.sample_queries(n_queries, 30, seed=3)
    x = world.feature_matrix(sample).astype(np.float64)
    columns: dict[str, pa.Array] = {
        "query_id": pa.array(np.repeat(np.arange(100, 100 + n_queries), 30)),
        "item_id": pa.array([world.item_ids[i] for i in sample.item_idx.ravel()]),
        "label": pa.array(sample.relevance.ravel().astype(np.int64)),
    }
    for j, name in enumerate(world.feature_row_order()):
        columns[name] = pa.array(x[:, j], from_pandas=True)  # NaN -> null
    columns["q_text_match"] = pa.array(np.random.default_rng(0).random(x.shape[0]))
    return pa.table(columns)


def test_csv_and_parquet(tmp_path: Path) -> None:
    table = _world_table()
    pq.write_table(table, tmp_path / "rows.parquet")
    # The CSV interleaves queries (row r of every query, then row r + 1, ...): the loader must
    # regroup them, keeping each query's rows in file order.
    order = np.arange(table.num_rows).reshape(-1, 30).T.ravel()
    pa_csv.write_csv(table.take(pa.array(order)), tmp_path / "rows.csv")
    from_parquet = load_ranking_data(tmp_path / "rows.parquet")
    from_csv = load_ranking_data(tmp_path / "rows.csv")
    assert from_parquet.ignored_columns == from_csv.ignored_columns == ("item_id",)
    assert from_csv.feature_names == from_parquet.feature_names
    assert len(from_csv.feature_names) == 65
    np.testing.assert_array_equal(from_csv.group_sizes, from_parquet.group_sizes)
    np.testing.assert_array_equal(from_csv.labels, from_parquet.labels)
    np.testing.assert_array_equal(from_csv.features, from_parquet.features)
    assert np.isnan(from_csv.features).any()

    for name in ("rows.parquet", "rows.csv"):
        report = train_command(
            tmp_path / name, None, tmp_path / f"b-{name}", prior="i_popularity", **FAST
        )
        bundle = load_bundle(report.out)
        sources = {f.name: f.source for f in bundle.features}
        assert sources["u_age"] == "user" and sources["i_popularity"] == "item"
        assert sources["c_hour"] == "context" and sources["q_text_match"] == "inline"
        assert bundle.prior == "i_popularity"
        assert report.ndcg_at_10 == pytest.approx(report.lightgbm_ndcg_at_10, abs=1e-12)
        assert "ignored    non-numeric columns: item_id" in str(report)


def test_custom_sources_and_columns(tmp_path: Path) -> None:
    table = _world_table(20).rename_columns(
        ["qid", "item_id", "grade", *_world_table(1).column_names[3:]]
    )
    pq.write_table(table, tmp_path / "rows.pq")
    report = train_command(
        tmp_path / "rows.pq",
        None,
        tmp_path / "b",
        group_column="qid",
        label_column="grade",
        sources={"u_": "user", "u_pref_": "inline"},
        **FAST,
    )
    sources = {f.name: f.source for f in report.bundle.features}
    assert sources["u_age"] == "user" and sources["u_pref_3"] == "inline"
    assert sources["i_price_points"] == "inline" and sources["c_hour"] == "inline"
    with pytest.raises(TrainDataError, match="prior 'i_popularity' is not an item feature"):
        train_command(
            tmp_path / "rows.pq",
            None,
            tmp_path / "c",
            group_column="qid",
            label_column="grade",
            sources={},
            prior="i_popularity",
            **FAST,
        )
    with pytest.raises(TrainDataError, match="source 'entity'"):
        train_command(tmp_path / "rows.pq", None, tmp_path / "d", sources={"x_": "entity"})


LETOR_ERRORS = [
    ("1 0:0.5\n2 3:abc\n", "1\n1\n", r"bad\.txt:2: feature value 'abc' is not a number"),
    ("1 0:0.5\n2 3\n", "1\n1\n", r"bad\.txt:2: token 2 '3' is not index:value"),
    ("1 0:0.5\n\nx 3:1\n", "1\n1\n", r"bad\.txt:3: label 'x' is not a number"),
    ("1 0:0.5\n2.5 3:1\n", "2\n", r"bad\.txt:2: label 2\.5 is not an integer grade"),
    ("1 0:0.5\n-1 3:1\n", "2\n", r"bad\.txt:2: label -1 is not an integer grade"),
    ("1 0:0.5\n1 -3:1\n", "2\n", r"bad\.txt:2: negative feature index -3"),
    ("1 0:0.5\n1 3:1\n", "1\n2\n", r"bad\.txt\.query: counts add up to 3 documents but"),
    ("1 0:0.5\n1 3:1\n", "1\nx\n", r"bad\.txt\.query:2: 'x' is not a document count"),
    ("\n# only a comment\n", "", r"bad\.txt: no data lines"),
]


@pytest.mark.parametrize(("body", "groups", "message"), LETOR_ERRORS)
def test_bad_letor(tmp_path: Path, body: str, groups: str, message: str) -> None:
    (tmp_path / "bad.txt").write_text(body)
    (tmp_path / "bad.txt.query").write_text(groups)
    with pytest.raises(TrainDataError, match=message):
        load_ranking_data(tmp_path / "bad.txt")


TABLE_ERRORS = [
    ("bad.csv", "query_id,label,a\n1,0,1\n1,1,2\n2,0\n", r"bad\.csv:4: cannot read"),
    (
        "bad.csv",
        "query_id,label,a\n1,0,1\n1,x,2\n",
        r"bad\.csv: label column 'label' must be numeric; .*bad\.csv:3 holds 'x'",
    ),
    (
        "bad.csv",
        "query_id,label,a\n1,0,1\n1,1.5,2\n",
        r"bad\.csv:3 column 'label': label 1\.5 is not",
    ),
    (
        "bad.csv",
        "query_id,grade,a\n1,0,1\n",
        r"bad\.csv: no label column 'label' \(columns: query_id, grade, a\)",
    ),
    ("bad.csv", "query_id,label,a\n,0,1\n", r"bad\.csv:2 group column 'query_id' is empty"),
    (
        "bad.csv",
        "query_id,label,a b\n1,0,1\n",
        r"bad\.csv: column 'a b' cannot be a LightGBM feature name",
    ),
    ("bad.csv", "query_id,label,name\n1,0,x\n", r"bad\.csv: no numeric feature columns"),
    ("bad.parquet", "not parquet at all", r"bad\.parquet: cannot read"),
]


@pytest.mark.parametrize(("name", "body", "message"), TABLE_ERRORS)
def test_bad_table(tmp_path: Path, name: str, body: str, message: str) -> None:
    (tmp_path / name).write_text(body)
    with pytest.raises(TrainDataError, match=message):
        load_ranking_data(tmp_path / name)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.txt: file not found"):
        train_command(tmp_path / "nope.txt", None, tmp_path / "b")
    with pytest.raises(ValueError, match="valid_fraction"):
        train_command(TRAIN, None, tmp_path / "b", valid_fraction=1.0)
    tiny = tmp_path / "one.txt"
    tiny.write_text("1 0:1\n0 0:2\n")
    (tmp_path / "one.txt.query").write_text("2\n")
    with pytest.raises(TrainDataError, match="1 queries are too few"):
        train_command(tiny, None, tmp_path / "b")
    report = train_command(tiny, None, tmp_path / "b", valid_fraction=0.0, **FAST)
    assert report.ndcg_at_10 is None and report.heldout is None
    assert "NDCG" not in str(report)


def test_train_params_are_the_one_source_of_defaults() -> None:
    """The CLI's defaults are TrainParams' own, and a bad value is refused when built."""
    from ranking.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert (args.trees, args.leaves) == (TrainParams().trees, TrainParams().leaves)
    with pytest.raises(TrainDataError, match="learning_rate"):
        TrainParams(learning_rate=0.0)
    with pytest.raises(TrainDataError, match="trees >= 1"):
        TrainParams(trees=0)


def test_cli_names_a_bad_input_without_a_traceback(tmp_path: Path) -> None:
    from ranking.cli import main

    with pytest.raises(SystemExit, match=r"ranking train: .*nope\.txt: file not found"):
        main(["train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="ranking train: need trees >= 1"):
        main(["train", "--data", str(TRAIN), "--out", str(tmp_path / "b"), "--trees", "0"])
