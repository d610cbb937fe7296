"""The strict model text parser: real models parse, every broken one is refused by line."""

from __future__ import annotations

import re

import lightgbm as lgb
import numpy as np
import pytest

from ranking.errors import BundleError
from ranking.scoring.lightgbm_scorer import LightGBMScorer
from ranking.scoring.model_text import parse_model_text
from ranking.scoring.quickscorer import QuickScorer, supports
from tests.conftest import train_small
from tests.scoring.conftest import nasty, reference, train
from tests.scoring.model_corpus import broken_models, native_outcomes, splices, valid_variants


@pytest.fixture(scope="module")
def small_text() -> str:
    return train_small(np.random.default_rng(7)).model_to_string()


@pytest.fixture(scope="module")
def corpus(small_text: str) -> list[tuple[str, str]]:
    return broken_models(small_text)


def _models() -> dict[str, str]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 6))
    x[:, 3] = rng.integers(0, 30, 1500)
    x[rng.random(x.shape) < 0.05] = np.nan
    y = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 3]) % 3 + rng.normal(size=1500)
    cat = {"categorical_feature": [3]}
    return {
        "regression_categorical": train({"objective": "regression"}, x, y, 5, **cat),
        "binary": train({"objective": "binary"}, x, (y > 1).astype(int), 5),
        "multiclass": train(
            {"objective": "multiclass", "num_class": 3}, x, np.digitize(y, [0.5, 1.5]), 4
        ),
        "lambdarank": train(
            {"objective": "lambdarank"},
            x,
            np.clip(np.digitize(y, [0, 1, 2]), 0, 3),
            5,
            group=[15] * 100,
        ),
        "random_forest": train(
            {"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1}, x, y, 4
        ),
        "linear": train({"objective": "regression", "linear_tree": True}, x, y, 3),
        "300_leaves": train(
            {"objective": "regression", "num_leaves": 300, "min_data_in_leaf": 2}, x, y, 2, **cat
        ),
        "single_leaf": train({"objective": "binary", "min_data_in_leaf": 5000}, x, y > 1, 2),
        "zero_as_missing": train({"zero_as_missing": True}, x, y, 3),
        "no_missing": train({"use_missing": False}, np.nan_to_num(x), y, 3),
    }


@pytest.mark.parametrize(("name", "text"), list(_models().items()))
def test_real_models_parse_as_lightgbm_reads_them(name: str, text: str) -> None:
    model = parse_model_text(text)
    booster = lgb.Booster(model_str=text)
    assert len(model.trees) == booster.num_trees()
    assert model.num_features == booster.num_feature()
    assert model.num_outputs == booster.num_model_per_iteration()
    assert list(model.feature_names) == booster.feature_name()
    assert model.trees[0].is_linear == (name == "linear")


def test_every_broken_model_is_refused_naming_a_line(corpus: list[tuple[str, str]]) -> None:
    assert len(corpus) > 400
    accepted = []
    for name, text in corpus:
        try:
            parse_model_text(text)
        except BundleError as exc:
            assert re.match(r"model text line \d+: \S", exc.message), (name, exc.message)
        else:
            accepted.append(name)
    assert accepted == []


def test_the_corpus_crashes_lightgbm_itself(corpus: list[tuple[str, str]]) -> None:
    """The corpus exercises the real failure: LightGBM's loader, given these texts directly
    (each in a forked child), dies of a signal on many of them."""
    outcomes = dict(
        zip((n for n, _ in corpus), native_outcomes([t for _, t in corpus]), strict=True)
    )
    killed = sorted(n for n, o in outcomes.items() if o.startswith("SIG"))
    assert len(killed) >= 50, outcomes
    assert {"SIGABRT", "SIGSEGV"} <= set(outcomes.values())
    # The cases the issue reported: a cut at 40 % and a corrupted threshold.
    assert any(n.startswith("tree0.threshold") for n in killed)
    assert any(n.startswith("truncated@") for n in killed)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t[: len(t) * 2 // 5], r"line \d+: (tree \d+|the model text is truncated)"),
        (lambda t: t.replace("\nend of trees\n", "\n"), "expected Tree=20 or 'end of trees'"),
        (
            lambda t: re.sub(r"tree_sizes=(\d+)", lambda m: f"tree_sizes={int(m[1]) + 1}", t),
            "tree_sizes says tree 0",
        ),
        (lambda t: re.sub(r"threshold=\S+", "threshold=1e999", t, count=1), "too large"),
        (lambda t: re.sub(r"threshold=\S+", "threshold=nan", t, count=1), "NaN"),
        (lambda t: re.sub(r"left_child=\S+", "left_child=40", t, count=1), "points to node 40"),
        (
            lambda t: re.sub(r"split_feature=\S+", "split_feature=9", t, count=1),
            r"holds 9, outside \[0, 8\]",
        ),
        (lambda t: t.replace("num_class=1", "num_class=0"), r"num_class=0 is outside"),
        (lambda t: t.replace("objective=lambdarank", "objective="), "unknown objective"),
        (lambda t: t.replace("Tree=1\n", "Tree=2\n"), "expected Tree=1"),
        (lambda t: t[: t.index("\nparameters:")] + "\n", "'parameters:'"),
    ],
)
def test_messages_name_the_problem(small_text: str, edit: object, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_model_text(edit(small_text))  # type: ignore[operator]


def test_message_names_the_right_line(small_text: str) -> None:
    lines = small_text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("decision_type="))
    lines[at] = "decision_type=99" + lines[at][len("decision_type=") + 1 :]
    with pytest.raises(
        BundleError, match=rf"^model text line {at + 1}: tree 0: node 0 has decision_type 99"
    ):
        parse_model_text("\n".join(lines))


def test_valid_variants_parse_and_lightgbm_agrees(small_text: str) -> None:
    rows = nasty(np.random.default_rng(0), 200, 9)
    want = reference(small_text, rows)
    for name, text in valid_variants(small_text):
        model = parse_model_text(text)
        assert len(model.trees) == 20, name
        np.testing.assert_array_equal(reference(text, rows), want, err_msg=name)
        np.testing.assert_array_equal(QuickScorer.from_model_text(text).score(rows), want)


def test_random_splices_are_refused_or_read_alike(small_text: str) -> None:
    entries = splices(small_text, count=40)
    refused = 0
    accepted = []
    for _, text in entries:
        try:
            parse_model_text(text)
        except BundleError:
            refused += 1
        else:
            accepted.append(text)
    assert refused > 0
    rows = nasty(np.random.default_rng(1), 50, 9)
    for text in accepted:  # safe in-process: the parser accepted them
        np.testing.assert_array_equal(
            QuickScorer.from_model_text(text).score(rows), reference(text, rows)
        )


def test_scorers_refuse_broken_text_before_native_code(corpus: list[tuple[str, str]]) -> None:
    for name, text in corpus[::7]:
        with pytest.raises(BundleError):
            LightGBMScorer(text)
        with pytest.raises(BundleError):
            QuickScorer.from_model_text(text)
        assert supports(text) is not None, name


def test_parse_is_memoised(small_text: str) -> None:
    assert parse_model_text(small_text) is parse_model_text(small_text)


def test_auto_engine_refuses_a_broken_text_without_falling_back(
    small_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from ranking.scoring.engines import build_scorer

    with caplog.at_level(logging.WARNING), pytest.raises(BundleError, match="model text line"):
        build_scorer(small_text[: len(small_text) // 2], "auto")
    assert "scoring with LightGBM" not in caplog.text
