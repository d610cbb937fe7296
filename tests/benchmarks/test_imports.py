"""Every benchmark program imports: the benchmarks are programs, not tests, so a helper that
moved (as `free_port` and `run_async` did when the runner was split) breaks one silently
unless something imports it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
MODULES = sorted(
    f"benchmarks.{p.stem}" if p.parent == BENCHMARKS else f"benchmarks.{p.parent.name}.{p.stem}"
    for p in [*BENCHMARKS.glob("*.py"), *BENCHMARKS.glob("*/*.py")]
    if p.stem != "__init__"
)


def test_the_benchmark_programs_are_all_found() -> None:
    assert "benchmarks.run" in MODULES and "benchmarks.warm_start" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name: str) -> None:
    importlib.import_module(name)
