"""The before/after benchmarks' common parts: a baseline's C extension, and their options.

The before/after benchmarks (`index_cold`, `score_cold`, `fetch_cpu`) time the code at another
git ref and this tree's in one process, in interleaved rounds, so that the machine's drift
cancels. `build_baseline` builds a baseline's extension from that ref's own sources with that
ref's own setup.py, in a temporary directory, and loads it under a name of its own;
`interleaved_parser` is their shared command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from types import ModuleType

__all__ = ["build_baseline", "interleaved_parser"]

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


def interleaved_parser(
    doc: str | None, *, rounds: int, batch: int, per: str
) -> argparse.ArgumentParser:
    """--baseline (a git ref, default main), --rounds and --batch (`per` of each side per round),
    described by the first paragraph of the benchmark's `doc`."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--baseline", default="main", help="git ref of the code before (default main)")
    ap.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    ap.add_argument("--batch", type=int, default=batch, help=f"{per} per side per round")
    return ap
