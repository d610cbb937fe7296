"""Fuzzing the model parser (hypothesis): it never crashes; it refuses a text with a
BundleError, or parses it to a model that LightGBM's own loader reads alike (same trees,
features, outputs and raw scores). LightGBM runs in a child process, so a text the parser
wrongly accepted and LightGBM crashes on fails this test instead of killing pytest."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranking.errors import BundleError
from ranking.scoring.model_text import parse_model_text
from ranking.scoring.quickscorer import QuickScorer
from tests.conftest import train_small
from tests.scoring.conftest import nasty
from tests.scoring.model_corpus import native_summary

TEXT = train_small(np.random.default_rng(11), trees=6, leaves=5).model_to_string()
LINES = TEXT.split("\n")
TREE_LINES = [i for i, line in enumerate(LINES) if "=" in line and not line.startswith("Tree=")]
ROWS = nasty(np.random.default_rng(2), 40, 9)
TOKENS = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "2",
            "-2",
            "7",
            "1e400",
            "nan",
            "inf",
            "-inf",
            "99999999999",
            "2147483648",
            "1.5",
            "abc",
            "",
            "-0",
            "1e-40",
            "3.0",
        ]
    ),
    st.integers(-20, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@st.composite
def mutants(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["token", "token", "truncate", "splice", "line", "swap"]))
    if kind == "truncate":
        return TEXT[: draw(st.integers(0, len(TEXT)))]
    if kind == "splice":
        at = draw(st.integers(0, len(TEXT) - 1))
        junk = draw(st.text(alphabet="0123456789-+.e= \nabcinf\x00", max_size=12))
        return TEXT[:at] + junk + TEXT[at + len(junk) :]
    lines = list(LINES)
    n = draw(st.sampled_from(TREE_LINES))
    if kind == "token":
        key, _, value = lines[n].partition("=")
        tokens = value.split(" ")
        k = draw(st.integers(0, max(len(tokens) - 1, 0)))
        tokens[k] = draw(TOKENS)
        lines[n] = f"{key}={' '.join(tokens)}"
    elif kind == "line":
        if draw(st.booleans()):
            del lines[n]
        else:
            lines.insert(n, lines[n])
    else:
        m = draw(st.sampled_from(TREE_LINES))
        lines[n], lines[m] = lines[m], lines[n]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def native() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        yield pool


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=mutants())
def test_parser_refuses_or_agrees_with_lightgbm(native: ProcessPoolExecutor, text: str) -> None:
    try:
        model = parse_model_text(text)
    except BundleError as exc:
        assert exc.message.startswith("model text line ")
        return
    try:
        trees, features, outputs, scores = native.submit(
            native_summary, text, ROWS.tolist()
        ).result(60)
    except BrokenProcessPool:
        pytest.fail(f"the parser accepted a text that crashed LightGBM:\n{text[:3000]}")
    assert (trees, features, outputs) == (len(model.trees), model.num_features, model.num_outputs)
    ours = QuickScorer.from_model_text(text).score(np.ascontiguousarray(ROWS))
    np.testing.assert_array_equal(ours.ravel(), np.asarray(scores))
