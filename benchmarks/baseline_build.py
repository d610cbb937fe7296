"""A C extension of the package as built at another git ref, loaded beside this tree's.

The before/after benchmarks of native code (`index_cold`, `score_cold`) time both builds in one
process, interleaved, so that the machine's drift cancels: this builds the baseline's extension
from that ref's own sources with that ref's own setup.py, in a temporary directory, and loads it
under a name of its own.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from types import ModuleType

__all__ = ["build_baseline"]

ROOT = Path(__file__).resolve().parent.parent


def build_baseline(ref: str, into: Path, module: str) -> ModuleType:
    """The extension `module` (dotted, e.g. "ranking.features._index") of git ref `ref`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=into,
        check=True,
        capture_output=True,
    )
    *package, name = module.split(".")
    (so,) = into.joinpath(*package).glob(f"{name}.*.so")
    spec = importlib.util.spec_from_file_location(f"baseline.{name}", so)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded
