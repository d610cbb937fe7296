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


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s["features"][2].update(source="cookie"),
            r"schema\.json: features\[2\] \(u_c\)\.source: source must be one of user, item",
        ),
        (lambda s: s["features"][4].pop("source"), r"features\[4\] \(i_x\)\.source: required"),
        (
            lambda s: s["features"][1].update(name=7),
            r"features\[1\]\.name: Input should be a valid string",
        ),
        (lambda s: s.update(output_index="0"), r"output_index: Input should be a valid integer"),
        (lambda s: s.update(model_version=3), r"model_version: Input should be a valid string"),
        (
            lambda s: s["features"][0].update(default=True),
            r"features\[0\] \(u_a\)\.default: .*number or null",
        ),
    ],
)
def test_schema_errors_name_the_field(
    small_world: SmallWorld, tmp_path: Path, edit: Any, message: str
) -> None:
    with pytest.raises(BundleError, match=message):
        load_bundle(copy_with(small_world, tmp_path, edit))


def test_schema_not_an_object(small_world: SmallWorld, tmp_path: Path) -> None:
    folder = copy_with(small_world, tmp_path)
    (folder / "schema.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match=r"schema\.json: must be a JSON object"):
        load_bundle(folder)


def test_broken_model_text_is_named_with_its_line(small_world: SmallWorld, tmp_path: Path) -> None:
    text = (small_world.bundle / "model.txt").read_text()
    folder = copy_with(small_world, tmp_path, model=text[: len(text) // 3])
    with pytest.raises(BundleError, match=r"b/model\.txt: model text line \d+: "):
        load_bundle(folder)


def test_bundle_holds_one_hash_of_its_text(small_world: SmallWorld) -> None:
    import hashlib

    b = load_bundle(small_world.bundle)
    assert b.model_hash == hashlib.sha256(b.model_text.encode()).hexdigest()
