"""Memory safety of the codec's C core: a sanitizer build of tests/server/fuzz/wire_fuzz.c.

Built twice: with clang (scripts/test installs it) as libFuzzer, coverage-guided, for 12 s; with
gcc as a seeded mutation loop over 300,000 inputs (a few seconds). Either way AddressSanitizer
and UBSan abort on the first bad read, write, leak or undefined operation.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ranking.api.v1 import ranking_pb2 as pb
from tests.server.wire_bytes import fixed64, group, ld, tag, varint

HARNESS = Path(__file__).parent / "fuzz" / "wire_fuzz.c"
SANITIZE = ["-O1", "-g", "-std=c11", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]


def seeds() -> list[bytes]:
    r200 = pb.RankRequest(
        request_id="r-1",
        user_id="u42",
        candidates=[pb.Candidate(id=f"i{k}") for k in range(200)],
        context={"c_hour": 20.0, "c_dow": 3.0},
        top_k=10,
    )
    inline = pb.RankRequest(
        user_id="u1",
        feature_names=["a", "b"],
        candidates=[
            pb.Candidate(id="x", feature_values=[1.0, 2.0]),
            pb.Candidate(id="é"),
            pb.Candidate(id="z", feature_values=[float("nan"), -0.0]),
        ],
        strict=True,
    )
    hand = (
        ld(
            3,
            ld(1, b"a") + tag(9, 0) + varint(7) + fixed64(2, 1.5) + group(11, tag(1, 5) + b"abcd"),
        )
        + ld(6, b"f")
        + ld(4, ld(1, b"k") + fixed64(2, 2.0))
        + ld(4, ld(1, b"k") + tag(9, 1) + b"\0" * 8)
        + tag(5, 0)
        + varint(-1)
        + group(20, group(21, b""))
    )
    return [r200.SerializeToString(), inline.SerializeToString(), hand, b""]


def build(tmp: Path, kind: str) -> Path:
    """Compile the harness as libFuzzer (clang) or as the standalone mutation loop (gcc)."""
    exe = tmp / f"wire_fuzz_{kind}"
    compiler = shutil.which("clang" if kind == "libfuzzer" else "gcc")
    if not compiler:
        pytest.skip(f"no {'clang' if kind == 'libfuzzer' else 'gcc'} to build the {kind} harness")
    flags = ["-fsanitize=fuzzer,address,undefined"]
    if kind == "standalone":
        flags = ["-fsanitize=address,undefined", "-DWIRE_STANDALONE"]
    done = subprocess.run(
        [compiler, *SANITIZE, *flags, str(HARNESS), "-o", str(exe)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return exe


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["libfuzzer", "standalone"])
def test_sanitizer_fuzz_finds_nothing(tmp_path: Path, kind: str) -> None:
    exe = build(tmp_path, kind)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = []
    for i, seed in enumerate(seeds()):
        path = corpus / f"seed{i}"
        path.write_bytes(seed)
        files.append(str(path))
    if kind == "libfuzzer":
        run = [str(exe), "-max_total_time=12", "-max_len=8192", "-seed=1"]
        run += [f"-artifact_prefix={tmp_path}/", str(corpus)]  # crash files stay in tmp
    else:
        run = [str(exe), "300000", "1", *files]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    report = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, report
    assert "ERROR: AddressSanitizer" not in report and "runtime error" not in report, report
    assert ("Done" if kind == "libfuzzer" else "no sanitizer report") in report, report
