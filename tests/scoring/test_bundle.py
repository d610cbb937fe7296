"""Bundle loading refuses what is wrong with a message naming it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ranking.errors import BundleError
from ranking.scoring.bundle import load_bundle
from tests.conftest import SmallWorld


def copy_with(world: SmallWorld, tmp: Path, edit: Any = None, model: str | None = None) -> Path:
    out = tmp / "b"
    out.mkdir()
    schema = json.loads((world.bundle / "schema.json").read_text())
    if edit is not None:
        edit(schema)
    (out / "schema.json").write_text(json.dumps(schema))
    (out / "model.txt").write_text(model or (world.bundle / "model.txt").read_text())
    return out


def test_valid_bundle(small_world: SmallWorld) -> None:
    b = load_bundle(small_world.bundle)
    assert b.version == "small-v1"
    assert b.prior == "i_pop"
    assert b.positions("user") == [0, 1, 2]
    assert b.features[7].default == 12.0
    assert math.isnan(b.features[0].default)  # NaN unless the schema says otherwise


CASES = [
    (lambda s: s["features"].reverse(), "model order"),
    (lambda s: s["features"].pop(), "lists 8 features, the model has 9"),
    (lambda s: s["features"][0].update(source="cookie"), "source must be one of"),
    (lambda s: s["features"][1].update(name="u_a"), "duplicate feature names"),
    (lambda s: s["features"][0].update(default="high"), "default must be a number"),
    (lambda s: s["features"][0].update(default=1e999), "finite"),
    (lambda s: s["features"][0].update(colour=1), "unknown keys"),
    (lambda s: s.update(prior="u_a"), "not an item feature"),
    (lambda s: s.update(format=9), "unsupported format"),
    (lambda s: s.update(features=[]), "non-empty list"),
    (lambda s: s.update(output_index=3), "output_index"),
]


@pytest.mark.parametrize(("edit", "needle"), CASES)
def test_bad_schema_is_named(
    small_world: SmallWorld, tmp_path: Path, edit: Any, needle: str
) -> None:
    with pytest.raises(BundleError, match=needle):
        load_bundle(copy_with(small_world, tmp_path, edit))


def test_bad_files(small_world: SmallWorld, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    bad = copy_with(small_world, tmp_path, model="hello\n")
    with pytest.raises(BundleError, match="not a LightGBM text model"):
        load_bundle(bad)
    (bad / "schema.json").write_text("{not json")
    with pytest.raises(BundleError, match="invalid JSON at line 1"):
        load_bundle(bad)
    (bad / "schema.json").unlink()
    with pytest.raises(BundleError, match=r"schema\.json: cannot read"):
        load_bundle(bad)
