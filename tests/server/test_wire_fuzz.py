"""Memory safety of the codec's C core: a sanitizer build of tests/server/fuzz/wire_fuzz.c.

Built twice: with clang (scripts/test installs it) as libFuzzer, coverage-guided, for 10 s; with
gcc as a seeded mutation loop over 300,000 inputs (a few seconds). Either way AddressSanitizer
and UBSan abort on the first bad read, write, leak or undefined operation. A third test builds
the Python glue (_wire.c) with the same sanitizers and drives it from Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy
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
        run = [str(exe), "-max_total_time=10", "-max_len=8192", "-seed=1"]
        run += [f"-artifact_prefix={tmp_path}/", str(corpus)]  # crash files stay in tmp
    else:
        run = [str(exe), "300000", "1", *files]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    report = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, report
    assert "ERROR: AddressSanitizer" not in report and "runtime error" not in report, report
    assert ("Done" if kind == "libfuzzer" else "no sanitizer report") in report, report


GLUE_DRIVER = r"""
import importlib.util, random, sys
import numpy as np
spec = importlib.util.spec_from_file_location("ranking.server._wire", sys.argv[1])
wire = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wire)
seeds = [open(p, "rb").read() for p in sys.argv[3:]]
rnd = random.Random(1)
decoded = 0
for _ in range(int(sys.argv[2])):
    data = bytearray(rnd.choice(seeds))
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randrange(len(data) + 1)
        op = rnd.randrange(4)
        if op == 0 and at < len(data):
            data[at] ^= 1 << rnd.randrange(8)
        elif op == 1:
            data[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 3)))
        elif op == 2:
            del data[at : at + rnd.randint(1, 4)]
        else:
            del data[at:]
    try:
        rid, uid, ids, offsets, ctx, top_k, strict, names, values, rows = wire.decode_request(
            bytes(data), rnd.choice([-1, 0, 3, 1000]), rnd.choice([-1, 0, 2, 100])
        )
    except wire.WireError:
        continue
    decoded += 1
    n = len(offsets) - 1
    order = np.array(rnd.sample(range(n), n), dtype=np.intp)
    unscored = rnd.randint(0, n)
    scores = np.linspace(-1, 1, n - unscored)
    wire.encode_response(ids, offsets, order, scores, unscored, uid, names, rid, b"\x12\x01x")
print(f"glue: {decoded} decoded, no sanitizer report")
"""


@pytest.mark.slow
def test_python_glue_under_sanitizers(tmp_path: Path) -> None:
    """_wire.c itself (objects, arrays, reference counts) built with ASan + UBSan and driven
    from Python over mutated requests, encoding a response for each one that decodes."""
    gcc = shutil.which("gcc")
    runtimes = []
    for lib in ("libasan.so", "libubsan.so"):
        found = subprocess.run(
            [gcc or "gcc", f"-print-file-name={lib}"], capture_output=True, text=True
        )
        runtimes.append(found.stdout.strip())
    if not gcc or not all(Path(r).is_absolute() for r in runtimes):
        pytest.skip("gcc with the ASan/UBSan runtimes is needed to build the glue under sanitizers")
    source = Path(__file__).parents[2] / "ranking" / "server" / "_wire.c"
    module = tmp_path / "_wire_asan.so"
    includes = [f"-I{numpy.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    done = subprocess.run(
        [
            gcc,
            "-shared",
            "-fPIC",
            *SANITIZE,
            "-fsanitize=address,undefined",
            *includes,
            "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION",
            str(source),
            "-o",
            str(module),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    files = []
    for i, seed in enumerate(seeds()):
        (tmp_path / f"seed{i}").write_bytes(seed)
        files.append(str(tmp_path / f"seed{i}"))
    env = {**os.environ, "LD_PRELOAD": " ".join(runtimes), "ASAN_OPTIONS": "detect_leaks=0"}
    run = [sys.executable, "-c", GLUE_DRIVER, str(module), "20000", *files]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env)
    report = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, report
    assert "no sanitizer report" in report and "runtime error" not in report, report
    decoded = int(report.split("glue: ")[1].split()[0])
    assert decoded > 1000, report  # most mutations of a valid request still decode
