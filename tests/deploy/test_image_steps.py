"""The container image's build, step by step, without a Docker engine.

The steps are read from the Dockerfile itself, so a step added there that this test does not
know fails here until it is reproduced. The build context is what the Dockerfile's COPY lines
take, less .dockerignore; the wheels are built from it as the build stage does (the package and
every dependency), installed with `--no-index` into a fresh virtualenv with nothing else, the demo
cache is built by the Dockerfile's own command (a smaller demo model, through the build args the
Dockerfile declares for that), and `ranking serve` from that virtualenv answers the image's
HEALTHCHECK command. What is not reproduced: the base image and its apt packages (the
compiler and libgomp1 are on this machine), the non-root user, and Docker itself.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
#: The demo model the test builds (Dockerfile build args): small, so this takes seconds.
BUILD_ARGS = {"RANKING_DEMO_TREES": "20", "RANKING_DEMO_LEAVES": "7"}


@dataclass
class Stage:
    name: str
    workdir: str = "/"
    steps: list[tuple[str, str]] = field(default_factory=list)  # (instruction, arguments)


def parse_dockerfile(text: str) -> list[Stage]:
    """The Dockerfile's stages and their instructions (continuations joined, comments out)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[2] if len(parts) > 2 else f"stage{len(stages)}"))
        elif word == "WORKDIR":
            stages[-1].workdir = rest
        else:
            stages[-1].steps.append((word, rest))
    return stages


def ignored(rel: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        parts = rel.split("/")
        # A pattern names a path from the context root; "**/" also matches at any depth.
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            candidates += parts
        if any(fnmatch.fnmatch(c, bare) for c in candidates):
            return True
    return False


def copy_context(sources: list[str], dest: Path) -> None:
    """COPY `sources` (paths in the repository) into `dest`, less .dockerignore."""
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for source in sources:
        src = ROOT / source
        assert src.exists(), f"the Dockerfile copies {source}, which is not in the repository"
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for path in files:
            rel = path.relative_to(ROOT).as_posix()
            if ignored(rel, patterns):
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)


def run(cmd: str, *, cwd: Path, env: dict[str, str], timeout: float) -> None:
    proc = subprocess.run(
        ["sh", "-ec", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a build step: nothing of this checkout's Python setup leaks in
    (no PYTHONPATH, no virtualenv), but the machine's way to reach the package index (pip's
    settings, proxies, CA bundles) is kept, as a build host's would be."""
    names = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    keep = {
        k: v
        for k, v in os.environ.items()
        if k in names or k.startswith("PIP_") or k.lower().endswith("_proxy")
    }
    keep.update(extra)
    return keep


def cached_models(home: Path) -> list[tuple[str, int]]:
    """The demo bundles in the image user's cache, with their model file's mtime."""
    cache = home / ".cache" / "ranking"
    return sorted(
        (p.name, (p / "model.txt").stat().st_mtime_ns) for p in cache.glob("demo-*") if p.is_dir()
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_image_build_steps_produce_a_server_that_passes_its_health_check(
    tmp_path: Path,
) -> None:
    build, runtime = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert build.name == "build"
    context = tmp_path / "context"
    wheels = tmp_path / "wheels"
    home = tmp_path / "home"
    home.mkdir()
    workdir = context / build.workdir.lstrip("/")
    workdir.mkdir(parents=True)

    def paths(arg: str) -> str:
        return arg.replace("/wheels", str(wheels))

    # --- build stage: COPY the context, build every wheel with the build stage's command ---
    for word, args in build.steps:
        if word == "COPY":
            *sources, _target = shlex.split(args)
            copy_context(sources, workdir)
        elif word == "RUN" and args.startswith("apt-get "):
            continue  # the base image's compiler: present on this machine
        elif word == "RUN" and args.startswith("pip wheel "):
            cmd = f"{shlex.quote(sys.executable)} -m {paths(args)}"
            run(cmd, cwd=workdir, env=clean_env(), timeout=900)
        else:
            pytest.fail(f"a build-stage step this test does not reproduce: {word} {args}")
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(n.startswith("ranking-") for n in built), built

    # --- runtime stage: a fresh virtualenv with only those wheels ---
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    env = clean_env(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # The install must find everything in the wheels the build stage made: no pip settings
    # (this machine's find-links or constraints) may add or pin anything.
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    args_declared: dict[str, str] = {}
    entrypoint: list[str] = []
    command: list[str] = []
    healthcheck: list[str] = []
    for word, args in runtime.steps:
        if word == "RUN" and args.startswith("apt-get "):
            continue  # libgomp1, LightGBM's OpenMP runtime: present on this machine
        if word == "RUN" and args.startswith("pip install "):
            run(paths(args), cwd=tmp_path, env=env, timeout=900)
        elif word == "RUN" and args.startswith("groupadd "):
            continue  # the image's non-root user: the test runs as whoever runs the suite
        elif word == "RUN" and args.startswith("python -c "):
            run(args, cwd=home, env=env, timeout=600)  # the demo cache, as the image builds it
        elif word == "COPY":
            assert args.startswith("--from=build /wheels"), args
        elif word == "ARG":
            name, _, default = args.partition("=")
            args_declared[name] = BUILD_ARGS.get(name, default)
        elif word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                for name, arg in args_declared.items():
                    value = value.replace(f"${{{name}}}", arg)
                env[key] = value
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif word == "CMD":
            command = json.loads(args)
        elif word == "HEALTHCHECK":
            healthcheck = json.loads(args.split(" CMD ", 1)[1])
        elif word in ("USER", "EXPOSE"):
            continue
        else:
            pytest.fail(f"a runtime-stage step this test does not reproduce: {word} {args}")
    assert set(BUILD_ARGS) <= set(args_declared), "the Dockerfile no longer takes the demo size"
    assert env["RANKING_DEMO_TREES"] == "20"

    # The venv sees only its own packages, and not this checkout.
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c", "import ranking, sys; print(ranking.__file__, sys.path)"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert str(env_dir) in probe.stdout.split()[0], probe.stdout
    assert str(ROOT) not in probe.stdout

    # --- the container: ENTRYPOINT + CMD, and the HEALTHCHECK against it (loopback only) ---
    port = free_port()
    env.update(RANKING_HOST="127.0.0.1", RANKING_PORT=str(port), RANKING_WORKERS="1")
    assert entrypoint == ["ranking"] and command == ["serve"]
    cached = cached_models(home)
    assert [name for name, _ in cached] == ["demo-20x7-10000x50000-v1"], cached
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(bin_dir / entrypoint[0]), *command], cwd=home, env=env, stdout=out, stderr=out
        )
    try:
        assert healthcheck[:2] == ["ranking", "health"], healthcheck
        check = [str(bin_dir / "ranking"), *healthcheck[1:]]
        check = [a.replace("127.0.0.1:50051", f"127.0.0.1:{port}") for a in check]
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            done = subprocess.run(check, cwd=home, env=env, capture_output=True, text=True)
            if done.returncode == 0:
                assert done.stdout.strip() == f"127.0.0.1:{port}: SERVING"
                break
            assert time.monotonic() < deadline, f"never healthy: {done.stderr}"
            time.sleep(0.5)
        # The demo model cached at build time was used, not trained again at start-up.
        assert cached_models(home) == cached
        ranked = subprocess.run(
            [str(bin_dir / "ranking"), "rank", "--target", f"127.0.0.1:{port}", "-n", "20"],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ranked.returncode == 0, ranked.stderr
        assert "model demo-20x7" in ranked.stdout
    finally:
        server.terminate()
        server.wait(30)
