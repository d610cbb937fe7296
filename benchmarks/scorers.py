"""Scoring engines side by side: LightGBM, QuickScorer's kernels, and compiled alternatives.

    python benchmarks/scorers.py                       # full run, writes benchmarks/results/
    python benchmarks/scorers.py --quick               # fewer repetitions, no alternatives
    python benchmarks/scorers.py --alt-python /tmp/venv-alt/bin/python

Models: "r200" is the R200 scenario's own model (the demo world's 500 trees x 63 leaves
LambdaRank over 64 features, built and cached by benchmarks/world.py), scored on two row sets:
"realistic", the matrices the service assembles for R200 requests (Zipf users and items with
1 % unknown ids, the scenario's context, the bundle's defaults for what is missing; rows 0-199
are one request, 1,000 rows five), and "random" (standard normal values). Traversal cost depends
on the data, so both are reported. "synthetic" (the same shape trained on synthetic rows, scored
on its own distribution) and "small" (200 x 31) are optional (`--models`).

Every figure is a median over interleaved rounds (each round calls every engine, in a random
order, so background load hits all engines alike), quoted as ms per call and ns per row per tree,
with the ratio to `Booster.predict` measured in the same process. In-process engines: LightGBM's
`Booster.predict`, LightGBM's C API through ctypes, QuickScorer's default choice ("quickscorer")
and each of its kernels this CPU has. Alternatives that would pollute the service's environment
(lleaves + llvmlite, ONNX Runtime, treelite + tl2cgen, oneDAL) run in a worker process under
another interpreter (a virtualenv outside the repo, `--alt-python`), which measures
`Booster.predict` again for its own ratios; one that cannot be imported or compiled in time is
reported as "not run: <reason>".

The worker mode (`--worker`) needs only numpy and lightgbm, so the module imports nothing else
at top level. The side virtualenv used for the committed results:

    python -m venv /tmp/venv-alt
    /tmp/venv-alt/bin/pip install "numpy<2.3" lightgbm==4.7.0 lleaves==1.3.0 llvmlite==0.44.0 \
        onnxmltools onnxruntime onnx "treelite>=4.4" "tl2cgen>=1.0" scikit-learn-intelex

(lleaves 1.3 needs llvmlite 0.44; newer llvmlite lacks `PassManagerBuilder`. oneDAL's
`daal4py.mb.convert_model` refuses ranking objectives, so its model is the same text with the
objective relabelled as regression; the trees, hence the raw scores, are the same.) Compiled
libraries are cached beside the models (~/.cache/ranking-bench/scorers), with their compile
times, and rebuilt when the model file is newer.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_CACHE = Path.home() / ".cache" / "ranking-bench" / "scorers"
MODELS = {
    # name: (trees, leaves)
    "r200": (500, 63),
    "synthetic": (500, 63),
    "small": (200, 31),
}
#: The row sets of each model (see the module docstring).
DATASETS = {"r200": ("realistic", "random"), "synthetic": ("own",), "small": ("own",)}
NUM_FEATURES = 64
TRAIN_ROWS = 50_000
DOCS_PER_QUERY = 100

Scores = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------
# Models and data


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features with some missing values and zeros, and graded relevance from a nonlinear
    function of them (so trees use many features and thresholds)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, NUM_FEATURES))
    x[:, :8] = np.round(x[:, :8] * 2)  # a few coarse, integer-like features
    w = rng.normal(size=NUM_FEATURES)
    signal = x @ w / 8 + np.sin(x[:, 8] * 2) + x[:, 9] * x[:, 10] / 2
    x[rng.random(x.shape) < 0.02] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    y = np.clip(np.round(signal + rng.normal(scale=0.5, size=rows) + 2), 0, 4)
    return x, y.astype(np.int64)


def model_path(cache: Path, name: str) -> Path:
    trees, leaves = MODELS[name]
    stem = "r200" if name == "synthetic" else name  # the file name of earlier runs
    return cache / f"{stem}-{trees}x{leaves}-f{NUM_FEATURES}-n{TRAIN_ROWS}.txt"


def r200_world() -> Any:
    """The R200 scenario's world (trained and cached by benchmarks/world.py on first use)."""
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.scenario import find_scenario, load_scenario
    from benchmarks.world import prepare_world

    scenario = load_scenario(find_scenario("r200"))
    return scenario, prepare_world(scenario.world)


def realistic_rows(requests: int, seed: int) -> np.ndarray:
    """The matrices the service assembles for `requests` R200 requests, stacked."""
    from benchmarks.world import MatrixBuilder

    scenario, world = r200_world()
    builder = MatrixBuilder(world)
    rng = np.random.default_rng(seed)
    mix = scenario.mix
    mats = [
        builder.matrix(user, mix.draw_candidates(rng, 200), mix.context)
        for user in mix.draw_users(rng, requests)
    ]
    return np.ascontiguousarray(np.vstack(mats), dtype=np.float64)


def ensure_model(cache: Path, name: str) -> Path:
    if name == "r200":
        _, world = r200_world()
        return Path(world.model_file)
    path = model_path(cache, name)
    if path.exists():
        return path
    import lightgbm as lgb

    trees, leaves = MODELS[name]
    x, y = synthetic(TRAIN_ROWS, seed=1)
    print(f"training {name}: {trees} trees x {leaves} leaves on {TRAIN_ROWS} rows ...", flush=True)
    t0 = time.perf_counter()
    params = {
        "objective": "lambdarank",
        "num_leaves": leaves,
        "learning_rate": 0.05,
        "min_data_in_leaf": 20,
        "verbose": -1,
        "num_threads": os.cpu_count() or 1,
        "seed": 1,
    }
    dataset = lgb.Dataset(x, y, group=[DOCS_PER_QUERY] * (TRAIN_ROWS // DOCS_PER_QUERY))
    booster = lgb.train(params, dataset, num_boost_round=trees)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    booster.save_model(str(tmp))
    tmp.replace(path)
    print(f"  trained in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return path


# ------------------------------------------------------------------------------------------
# Timing


def measure(
    engines: dict[str, Scores], batches: dict[int, np.ndarray], reps: int, warmup: int = 10
) -> dict[str, dict[int, dict[str, float]]]:
    """Per engine and batch size, over `reps` interleaved rounds: median, p10 and p90 seconds of
    a warm call, and the median of a cold one.

    Each round calls every engine twice in a row, in a new random order (an engine that runs
    right after another is slower, its caches and branch predictors cooled; a fixed order
    would favour some). The first call follows other work, as in the service, where each
    request's scoring comes between parsing, feature reads and other requests; the second
    runs warm. Both are reported.
    """
    rng = np.random.default_rng(0)
    names = list(engines)
    warm: dict[str, dict[int, list[float]]] = {e: {b: [] for b in batches} for e in engines}
    cold: dict[str, dict[int, list[float]]] = {e: {b: [] for b in batches} for e in engines}
    for rows, x in batches.items():
        for fn in engines.values():
            for _ in range(warmup):
                fn(x)
        for _ in range(reps):
            for i in rng.permutation(len(names)):
                name, fn = names[i], engines[names[i]]
                t0 = time.perf_counter()
                fn(x)
                t1 = time.perf_counter()
                fn(x)
                t2 = time.perf_counter()
                cold[name][rows].append(t1 - t0)
                warm[name][rows].append(t2 - t1)
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name in engines:
        out[name] = {}
        for rows in batches:
            arr = np.asarray(warm[name][rows])
            out[name][rows] = {
                "median_s": float(np.median(arr)),
                "p10_s": float(np.percentile(arr, 10)),
                "p90_s": float(np.percentile(arr, 90)),
                "cold_median_s": float(np.median(cold[name][rows])),
            }
    return out


def max_gap(got: np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got, dtype=np.float64).reshape(want.shape)
    return float(np.max(np.abs(got - want), initial=0.0))


def lightgbm_engines(model_file: Path) -> tuple[dict[str, Scores], Any]:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(model_file))

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(x, raw_score=True, num_threads=1))

    return {"lightgbm": predict}, booster


def capi_engine(booster: Any) -> Scores:
    """`LGBM_BoosterPredictForMat` through ctypes: LightGBM without the Python wrapper."""
    from lightgbm.basic import _LIB

    handle = booster._handle
    params = ctypes.c_char_p(b"num_threads=1")
    out_len = ctypes.c_int64(0)

    def predict(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[0], dtype=np.float64)
        rc = _LIB.LGBM_BoosterPredictForMat(
            handle,
            x.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
            ctypes.c_int32(x.shape[0]),
            ctypes.c_int32(x.shape[1]),
            ctypes.c_int(1),  # row major
            ctypes.c_int(1),  # C_API_PREDICT_RAW_SCORE
            ctypes.c_int(0),
            ctypes.c_int(-1),
            params,
            ctypes.byref(out_len),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        if rc != 0:
            raise RuntimeError("LGBM_BoosterPredictForMat failed")
        return out

    return predict


# ------------------------------------------------------------------------------------------
# Alternatives (worker process, other interpreter)


def _record_compile(lib: Path, seconds: float) -> str:
    """Notes how long a cached library took to build, so later runs can still report it."""
    text = f"compiled in {seconds:.1f} s"
    lib.with_suffix(".compile.txt").write_text(text + "\n")
    return text


def _compile_record(lib: Path) -> str:
    try:
        return lib.with_suffix(".compile.txt").read_text().strip()
    except OSError:
        return "compile time not recorded"


def alt_lleaves(model_file: Path, cache: Path, timeout_s: float) -> tuple[Scores, dict[str, Any]]:
    import lleaves

    so = cache / f"{model_file.stem}.lleaves.so"
    model = lleaves.Model(model_file=str(model_file))
    t0 = time.perf_counter()
    if so.exists() and so.stat().st_mtime >= model_file.stat().st_mtime:
        model.compile(cache=str(so), raw_score=True)
        info = {
            "compile": f"cached: {_compile_record(so)}, loaded in {time.perf_counter() - t0:.2f} s"
        }
    else:
        estimate = 0.2 * model.num_trees()
        if estimate > timeout_s:
            raise TimeoutError(f"compile estimated at ~{estimate:.0f} s > {timeout_s:.0f} s")
        model.compile(cache=str(so), raw_score=True)
        info = {"compile": _record_compile(so, time.perf_counter() - t0)}

    def predict(x: np.ndarray) -> np.ndarray:
        return model.predict(x, n_jobs=1)

    return predict, info


def alt_onnx(model_file: Path, cache: Path, timeout_s: float) -> tuple[Scores, dict[str, Any]]:
    del cache, timeout_s
    import lightgbm as lgb
    import onnxmltools
    import onnxruntime as ort
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = lgb.Booster(model_file=str(model_file))
    t0 = time.perf_counter()
    onx = onnxmltools.convert_lightgbm(
        booster, initial_types=[("input", FloatTensorType([None, booster.num_feature()]))]
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onx.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    info = {
        "compile": f"convert {time.perf_counter() - t0:.1f} s",
        "note": "float32 input and output (the float64 -> float32 cast is timed)",
        "version": ort.__version__,
    }

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: x.astype(np.float32)})[0], dtype=np.float64)

    return predict, info


def relabel_as_regression(model_text: str) -> str:
    """The model text with its objective relabelled as regression (header and parameters);
    the trees, and so the raw scores, are untouched."""
    text = re.sub(r"^objective=.*$", "objective=regression", model_text, flags=re.M)
    return re.sub(r"^\[objective: .*\]$", "[objective: regression]", text, flags=re.M)


def alt_onedal(model_file: Path, cache: Path, timeout_s: float) -> tuple[Scores, dict[str, Any]]:
    del cache, timeout_s
    from importlib.metadata import version

    import daal4py as d4p
    import lightgbm as lgb

    d4p.daalinit(1)  # one thread, like every other engine here
    text = model_file.read_text()
    relabelled = relabel_as_regression(text)
    note = "objective relabelled as regression (oneDAL refuses ranking objectives)"
    if relabelled == text:
        note = ""
    t0 = time.perf_counter()
    model = d4p.mb.convert_model(lgb.Booster(model_str=relabelled))
    info = {
        "compile": f"convert {time.perf_counter() - t0:.1f} s",
        "note": note,
        "version": f"scikit-learn-intelex {version('scikit-learn-intelex')}",
    }

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x), dtype=np.float64).reshape(-1)

    return predict, info


def alt_tl2cgen(model_file: Path, cache: Path, timeout_s: float) -> tuple[Scores, dict[str, Any]]:
    del timeout_s
    import tl2cgen
    import treelite

    model = treelite.frontend.load_lightgbm_model(str(model_file))
    lib = cache / f"{model_file.stem}.tl2cgen.so"
    t0 = time.perf_counter()
    if not (lib.exists() and lib.stat().st_mtime >= model_file.stat().st_mtime):
        tl2cgen.export_lib(
            model,
            toolchain="gcc",
            libpath=str(lib),
            params={"parallel_comp": 8, "quantize": 1},
            nthread=os.cpu_count() or 1,
        )
        compile_info = (
            _record_compile(lib, time.perf_counter() - t0)
            + f" (quantize=1, {os.cpu_count()} threads)"
        )
    else:
        compile_info = f"cached: {_compile_record(lib)} (quantize=1)"
    predictor = tl2cgen.Predictor(str(lib), nthread=1)

    def predict(x: np.ndarray) -> np.ndarray:
        out = predictor.predict(tl2cgen.DMatrix(x, dtype="float64"), pred_margin=True)
        return np.asarray(out, dtype=np.float64).reshape(-1)

    info = {"compile": compile_info, "version": tl2cgen.__version__}
    return predict, info


ALTERNATIVES: dict[str, Callable[[Path, Path, float], tuple[Scores, dict[str, Any]]]] = {
    "lleaves": alt_lleaves,
    "onnxruntime": alt_onnx,
    "tl2cgen": alt_tl2cgen,
    "onedal": alt_onedal,
}


def worker(args: argparse.Namespace) -> int:
    """Runs in the alternative interpreter: one alternative on one model, plus LightGBM."""
    model_file = Path(args.model)
    lgb_engines, booster = lightgbm_engines(model_file)
    result: dict[str, Any] = {"alternative": args.worker}
    try:
        fn, info = ALTERNATIVES[args.worker](model_file, Path(args.cache), args.compile_timeout)
    except Exception as exc:  # report any failure as "not run"
        result["status"] = f"not run: {type(exc).__name__}: {str(exc)[:200]}"
        print(json.dumps(result))
        return 0
    result.update(info)
    engines = {"lightgbm": lgb_engines["lightgbm"], args.worker: fn}
    if args.ours:
        # QuickScorer from the repository, interleaved with the peer in this same process, so
        # the ratio between the two does not depend on the machine's state between processes.
        sys.path.insert(0, args.ours)
        from ranking.scoring.quickscorer import QuickScorer

        engines["quickscorer"] = QuickScorer.from_model_text(model_file.read_text()).score
    result["datasets"] = {}
    for item in args.data.split(","):
        dataset, path = item.split("=", 1)
        data = np.load(path)
        batches = {int(b): np.ascontiguousarray(data[: int(b)]) for b in args.batches.split(",")}
        x = batches[max(batches)]
        result["datasets"][dataset] = {
            "max_abs_diff": max_gap(fn(x), lgb_engines["lightgbm"](x)),
            "timings": measure(engines, batches, args.reps),
        }
    result["status"] = "ok"
    del booster
    print(json.dumps(result))
    return 0


def run_alternative(
    alt_python: str, name: str, model_file: Path, data: str, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [
        alt_python,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--model",
        str(model_file),
        "--data",
        data,
        "--batches",
        ",".join(str(b) for b in args.batch_sizes),
        "--reps",
        str(args.reps),
        "--cache",
        str(args.cache_dir),
        "--compile-timeout",
        str(args.compile_timeout),
        "--ours",
        str(HERE.parent),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=args.compile_timeout + 900,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"alternative": name, "status": "not run: timed out"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"alternative": name, "status": f"not run: worker failed ({tail})"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ------------------------------------------------------------------------------------------
# Main


def machine_info() -> dict[str, Any]:
    # Not shared with benchmarks/run.py on purpose: this file also runs as a worker under other
    # virtualenvs (lleaves, ONNX Runtime, tl2cgen) that have none of the project's packages.
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightgbm

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "lightgbm": lightgbm.__version__,
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def row(
    model: str,
    dataset: str,
    engine: str,
    rows: int,
    trees: int,
    timing: dict[str, float],
    base: dict[str, float],
    process: str,
    gap: float | None,
    note: str = "",
) -> dict[str, Any]:
    med = timing["median_s"]
    return {
        "model": model,
        "dataset": dataset,
        "engine": engine,
        "process": process,
        "rows": rows,
        "median_ms": med * 1e3,
        "p10_ms": timing["p10_s"] * 1e3,
        "p90_ms": timing["p90_s"] * 1e3,
        "cold_median_ms": timing["cold_median_s"] * 1e3,
        "ns_per_row_tree": med / rows / trees * 1e9,
        "speedup_vs_lightgbm": base["median_s"] / med,
        "cold_speedup_vs_lightgbm": base["cold_median_s"] / timing["cold_median_s"],
        "max_abs_diff": gap,
        "note": note,
    }


def datasets(name: str, rows: int) -> dict[str, np.ndarray]:
    """The row sets of a model, `rows` rows each (see the module docstring)."""
    if name == "r200":
        realistic = realistic_rows(-(-rows // 200), seed=7)[:rows]
        random = np.random.default_rng(99).normal(size=(rows, NUM_FEATURES))
        return {"realistic": realistic, "random": np.ascontiguousarray(random)}
    own, _ = synthetic(rows, seed=99)
    return {"own": np.ascontiguousarray(own)}


def build_time_ms(model_text: str, rounds: int = 5) -> float:
    """Median time of `QuickScorer.from_model_text` from the text (parse, QuickScorer's and the
    rank kernel's arrays), each round on a text with one more trailing newline so that the
    memo keyed by the text's hash cannot serve it."""
    from ranking.scoring.quickscorer import QuickScorer

    times = []
    for i in range(rounds):
        text = model_text + "\n" * (i + 1)
        t0 = time.perf_counter()
        QuickScorer.from_model_text(text)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--models", default="r200")
    parser.add_argument(
        "--batch-sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1, 7, 50, 200, 1000],
    )
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--alt-python", default="/tmp/venv-alt/bin/python")
    parser.add_argument("--alternatives", default="lleaves,onnxruntime,tl2cgen,onedal")
    parser.add_argument("--compile-timeout", type=float, default=240.0)
    parser.add_argument("--quick", action="store_true", help="50 reps, no alternatives")
    # worker mode
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--ours", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.reps = 50
        args.alternatives = ""

    sys.path.insert(0, str(HERE.parent))
    from ranking.scoring.quickscorer import QuickScorer

    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average_at_start']}", flush=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    alternatives: list[dict[str, Any]] = []
    builds: dict[str, float] = {}
    kernels: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = ensure_model(args.cache_dir, name)
            text = path.read_text()
            trees = MODELS[name][0]
            builds[name] = build_time_ms(text)
            qs = QuickScorer.from_model_text(text)
            kernels[name] = f"{qs.kernel} from 16 rows, {qs.small_kernel} below, scalar for 1 row"
            engines, booster = lightgbm_engines(path)
            engines["lightgbm-capi"] = capi_engine(booster)
            engines["quickscorer"] = qs.score
            for kname, kid in qs.kernels.items():
                engines[f"quickscorer[{kname}]"] = lambda x, k=kid, s=qs: s.score(x, kernel=k)
            data_args = []
            for dataset, x_all in datasets(name, max(args.batch_sizes)).items():
                data_file = Path(tmp) / f"{name}-{dataset}.npy"
                np.save(data_file, x_all)
                data_args.append(f"{dataset}={data_file}")
                batches = {b: np.ascontiguousarray(x_all[:b]) for b in args.batch_sizes}
                want = engines["lightgbm"](x_all)
                gaps = {e: max_gap(fn(x_all), want) for e, fn in engines.items()}
                print(
                    f"{name} / {dataset}: built in {builds[name]:.0f} ms ({kernels[name]}); "
                    "measuring ...",
                    flush=True,
                )
                timings = measure(engines, batches, args.reps)
                for engine, per_batch in timings.items():
                    for rows, timing in per_batch.items():
                        note = kernels[name] if engine == "quickscorer" else ""
                        base = timings["lightgbm"][rows]
                        results.append(
                            row(
                                name,
                                dataset,
                                engine,
                                rows,
                                trees,
                                timing,
                                base,
                                "main",
                                gaps[engine],
                                note,
                            )
                        )
            for alt in filter(None, args.alternatives.split(",")):
                if not Path(args.alt_python).exists():
                    alternatives.append(
                        {
                            "model": name,
                            "alternative": alt,
                            "status": f"not run: {args.alt_python} not found",
                        }
                    )
                    continue
                print(f"{name}: {alt} in {args.alt_python} ...", flush=True)
                res = run_alternative(args.alt_python, alt, path, ",".join(data_args), args)
                res["model"] = name
                alternatives.append(res)
                if res.get("status") != "ok":
                    print(f"  {res['status']}", flush=True)
                    continue
                note = "; ".join(str(res[k]) for k in ("version", "compile", "note") if res.get(k))
                for dataset, dres in res["datasets"].items():
                    for rows, timing in dres["timings"][alt].items():
                        base = dres["timings"]["lightgbm"][rows]
                        results.append(
                            row(
                                name,
                                dataset,
                                alt,
                                int(rows),
                                trees,
                                timing,
                                base,
                                f"worker:{alt}",
                                dres["max_abs_diff"],
                                note,
                            )
                        )
                        results.append(
                            row(
                                name,
                                dataset,
                                "lightgbm",
                                int(rows),
                                trees,
                                base,
                                base,
                                f"worker:{alt}",
                                0.0,
                                "same-process baseline",
                            )
                        )
                        ours = dres["timings"].get("quickscorer", {}).get(rows)
                        if ours is not None:
                            results.append(
                                row(
                                    name,
                                    dataset,
                                    "quickscorer",
                                    int(rows),
                                    trees,
                                    ours,
                                    base,
                                    f"worker:{alt}",
                                    None,
                                    "same-process comparison",
                                )
                            )
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    doc = {
        "machine": info,
        "settings": {
            "reps": args.reps,
            "batch_sizes": args.batch_sizes,
            "models": {
                m: {
                    "trees": MODELS[m][0],
                    "leaves": MODELS[m][1],
                    "features": NUM_FEATURES,
                    "datasets": list(DATASETS[m]),
                }
                for m in args.models.split(",")
            },
            "quickscorer_build_ms": {m: round(v, 1) for m, v in builds.items()},
            "quickscorer_default_kernel": kernels,
        },
        "results": results,
        "alternatives": alternatives,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scorers.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "scorers.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def _find(doc: dict[str, Any], **keys: Any) -> dict[str, Any] | None:
    for r in doc["results"]:
        if all(r.get(k) == v for k, v in keys.items()):
            return r
    return None


def _gap(r: dict[str, Any] | None) -> str:
    if r is None or r["max_abs_diff"] is None:
        return "-"
    return "0" if r["max_abs_diff"] == 0 else f"{r['max_abs_diff']:.2g}"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    s = doc["settings"]
    engines = list(dict.fromkeys(r["engine"] for r in doc["results"]))
    lines = [
        "# Scoring engines",
        "",
        f"{m['date_utc']} UTC; {m['cpu']}, {m['cores']} cores (a VM shared with other work); "
        f"Python {m['python']}, LightGBM {m['lightgbm']}, numpy {m['numpy']}. Load average "
        f"{m['load_average_at_start']} at start, {m.get('load_average_at_end')} at end.",
        "",
        f"Median of {s['reps']} interleaved rounds per batch, one thread, float64 input. Each "
        "round calls every engine twice in a row, in a random order: `median ms` is the second "
        "(warm) call, `cold ms` the first, made right after another engine cooled its caches "
        "and branch predictors, as other work does in the service. `x LightGBM` is the ratio to "
        "`Booster.predict(raw_score=True)` timed in the same process (worker rows: the "
        "alternative's own process). QuickScorer builds from the model text in "
        + ", ".join(f"{k}: {v:.0f} ms" for k, v in s["quickscorer_build_ms"].items())
        + " (parse, QuickScorer's arrays and the rank kernel's); its default kernel: "
        + "; ".join(f"{k}: {v}" for k, v in s["quickscorer_default_kernel"].items())
        + ".",
    ]
    for model in s["models"]:
        for dataset in s["models"][model]["datasets"]:
            lines += _summary(doc, model, dataset, engines)
    lines += [
        "",
        "## Every measurement",
        "",
        "| model | rows from | engine | rows | median ms | p10-p90 ms | ns/row/tree | x LightGBM "
        "| cold ms | cold x LightGBM | max abs diff | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        if r["process"] != "main" and r["engine"] in ("lightgbm", "quickscorer"):
            engine = f"{r['engine']} ({r['process']})"
        else:
            engine = r["engine"]
        lines.append(
            f"| {r['model']} | {r['dataset']} | {engine} | {r['rows']} | {r['median_ms']:.3f} | "
            f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f} | {r['ns_per_row_tree']:.1f} | "
            f"{r['speedup_vs_lightgbm']:.1f} | {r['cold_median_ms']:.3f} | "
            f"{r['cold_speedup_vs_lightgbm']:.1f} | {_gap(r)} | {r['note']} |"
        )
    skipped = [a for a in doc["alternatives"] if a.get("status") != "ok"]
    if skipped:
        lines += ["", "Not run:", ""]
        lines += [f"- {a['model']} / {a['alternative']}: {a['status']}" for a in skipped]
    return "\n".join(lines) + "\n"


def _summary(doc: dict[str, Any], model: str, dataset: str, engines: list[str]) -> list[str]:
    """At 200 rows: every engine; QuickScorer against each peer in the peer's own process; then
    ns/row/tree per batch size."""
    batches = doc["settings"]["batch_sizes"]
    ref = 200 if 200 in batches else max(batches)
    lines = [
        "",
        f"## {model}, {dataset} rows, {ref} rows per call",
        "",
        "| engine | median ms | ns/row/tree | x LightGBM | max abs diff | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for engine in engines:
        r = _find(doc, model=model, dataset=dataset, engine=engine, rows=ref)
        if r is None:
            continue
        bold = "**" if engine == "quickscorer" else ""
        lines.append(
            f"| {bold}{engine}{bold} | {r['median_ms']:.3f} | {bold}{r['ns_per_row_tree']:.2f}"
            f"{bold} | {r['speedup_vs_lightgbm']:.1f} | {_gap(r)} | {r['note']} |"
        )
    peers = [
        e
        for e in engines
        if _find(doc, model=model, dataset=dataset, engine=e, rows=ref, process=f"worker:{e}")
    ]
    if peers:
        lines += [
            "",
            "QuickScorer (default kernel) against each peer, both timed interleaved in the "
            "peer's process (with LightGBM), so machine drift between processes does not enter "
            "the ratio:",
            "",
            "| peer | peer ns/row/tree | ours ns/row/tree | ours faster by | LightGBM ns/row/tree "
            "| peer's max abs diff |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for p in peers:
            where = {"model": model, "dataset": dataset, "rows": ref, "process": f"worker:{p}"}
            peer = _find(doc, engine=p, **where)
            ours = _find(doc, engine="quickscorer", **where)
            lgbm = _find(doc, engine="lightgbm", **where)
            if peer is None or ours is None or lgbm is None:
                continue
            lines.append(
                f"| {p} | {peer['ns_per_row_tree']:.2f} | {ours['ns_per_row_tree']:.2f} | "
                f"{peer['median_ms'] / ours['median_ms']:.1f}x | {lgbm['ns_per_row_tree']:.1f} | "
                f"{_gap(peer)} |"
            )
    lines += [
        "",
        f"ns per row per tree by batch size ({model}, {dataset} rows; main process, peers in "
        "their own; 50, 200 and 1,000 rows end in a partial 64-row pass):",
        "",
        "| engine | " + " | ".join(str(b) for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    for engine in engines:
        cells = []
        for b in batches:
            r = _find(doc, model=model, dataset=dataset, engine=engine, rows=b)
            cells.append("-" if r is None else f"{r['ns_per_row_tree']:.2f}")
        if all(c == "-" for c in cells):
            continue
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
