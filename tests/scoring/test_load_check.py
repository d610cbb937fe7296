"""The child-process load check: a text that crashes LightGBM kills only the child."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from ranking.errors import BundleError
from ranking.scoring.load_check import check_in_child
from ranking.scoring.model_text import parse_model_text
from tests.conftest import train_small
from tests.scoring.model_corpus import broken_models


@pytest.fixture(scope="module")
def good() -> str:
    return train_small(np.random.default_rng(7)).model_to_string()


def test_a_good_model_passes(good: str) -> None:
    check_in_child(good, parse_model_text(good))


def test_a_crash_in_lightgbm_is_a_refusal(good: str, caplog: pytest.LogCaptureFixture) -> None:
    """Texts the parser refuses, given to the child anyway (as if the parser had a hole)."""
    corpus = dict(broken_models(good))
    model = parse_model_text(good)
    with caplog.at_level(logging.ERROR):
        with pytest.raises(BundleError, match=r"LightGBM crashed \(SIG(ABRT|SEGV)\) loading"):
            check_in_child(corpus["header.tree_sizes.off_by_one"], model)
        with pytest.raises(BundleError, match=r"LightGBM crashed \(SIG(ABRT|SEGV)\) loading"):
            check_in_child(corpus["tree0.threshold.garbage"], model)
    assert "Model format error" in caplog.text  # LightGBM's own words stay in the log


def test_a_lightgbm_error_is_a_refusal_without_its_text(good: str) -> None:
    broken = good.replace("num_class=1\n", "")  # LightGBMError: no number of classes
    with pytest.raises(BundleError) as info:
        check_in_child(broken, parse_model_text(good))
    assert info.value.message == "LightGBM refused the model (details in the server log)"


def test_a_disagreement_with_the_parser_is_a_refusal(good: str) -> None:
    model = dataclasses.replace(parse_model_text(good), num_features=5)
    with pytest.raises(BundleError, match="reads the model differently"):
        check_in_child(good, model)
