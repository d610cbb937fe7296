"""Scoring engines side by side: LightGBM, QuickScorer, and compiled alternatives.

    python benchmarks/scorers.py                       # full run, writes benchmarks/results/
    python benchmarks/scorers.py --quick               # fewer repetitions, no alternatives
    python benchmarks/scorers.py --alt-python /tmp/venv-alt/bin/python

Two models: "r200" (the service's shape: 64 features, 500 trees x 63 leaves, LambdaRank on 50k
synthetic rows) and "small" (200 trees x 31 leaves). Both are trained once and cached.

Every figure is a median over interleaved rounds (each round calls every engine once, so
background load hits all engines alike), quoted as ms per call and ns per row per tree, with
the ratio to `Booster.predict` measured in the same process. In-process engines: LightGBM's
`Booster.predict`, LightGBM's C API through ctypes, QuickScorer with each kernel this CPU has.
Alternatives that would pollute the service's environment (lleaves + llvmlite, ONNX Runtime,
treelite + tl2cgen) run in a worker process under another interpreter (a virtualenv outside the
repo, `--alt-python`), which measures `Booster.predict` again for its own ratios; one that
cannot be imported or compiled in time is reported as "not run: <reason>".

The worker mode (`--worker`) needs only numpy and lightgbm, so the module imports nothing else
at top level. The side virtualenv used for the committed results:

    python -m venv /tmp/venv-alt
    /tmp/venv-alt/bin/pip install "numpy<2.3" lightgbm==4.7.0 lleaves==1.3.0 llvmlite==0.44.0 \
        onnxmltools onnxruntime onnx "treelite>=4.4" "tl2cgen>=1.0"

(lleaves 1.3 needs llvmlite 0.44; newer llvmlite lacks `PassManagerBuilder`.) Compiled
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
    "small": (200, 31),
}
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
    return cache / f"{name}-{trees}x{leaves}-f{NUM_FEATURES}-n{TRAIN_ROWS}.txt"


def ensure_model(cache: Path, name: str) -> Path:
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
}


def worker(args: argparse.Namespace) -> int:
    """Runs in the alternative interpreter: one alternative on one model, plus LightGBM."""
    model_file = Path(args.model)
    data = np.load(args.data)
    batches = {int(b): np.ascontiguousarray(data[: int(b)]) for b in args.batches.split(",")}
    lgb_engines, booster = lightgbm_engines(model_file)
    result: dict[str, Any] = {"alternative": args.worker}
    try:
        fn, info = ALTERNATIVES[args.worker](model_file, Path(args.cache), args.compile_timeout)
    except Exception as exc:  # report any failure as "not run"
        result["status"] = f"not run: {type(exc).__name__}: {str(exc)[:200]}"
        print(json.dumps(result))
        return 0
    x = batches[max(batches)]
    result["max_abs_diff"] = max_gap(fn(x), lgb_engines["lightgbm"](x))
    result.update(info)
    engines = {"lightgbm": lgb_engines["lightgbm"], args.worker: fn}
    result["timings"] = measure(engines, batches, args.reps)
    result["status"] = "ok"
    del booster
    print(json.dumps(result))
    return 0


def run_alternative(
    alt_python: str, name: str, model_file: Path, data_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [
        alt_python,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--model",
        str(model_file),
        "--data",
        str(data_file),
        "--batches",
        ",".join(str(b) for b in args.batch_sizes),
        "--reps",
        str(args.reps),
        "--cache",
        str(args.cache_dir),
        "--compile-timeout",
        str(args.compile_timeout),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=args.compile_timeout + 300,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--models", default="r200,small")
    parser.add_argument(
        "--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[200, 1000]
    )
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--alt-python", default="/tmp/venv-alt/bin/python")
    parser.add_argument("--alternatives", default="lleaves,onnxruntime,tl2cgen")
    parser.add_argument("--compile-timeout", type=float, default=240.0)
    parser.add_argument("--quick", action="store_true", help="50 reps, no alternatives")
    # worker mode
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.reps = 50
        args.alternatives = ""

    from ranking.scoring.quickscorer import QuickScorer, available_kernels

    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average_at_start']}", flush=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    x_test, _ = synthetic(max(args.batch_sizes), seed=99)
    x_test = np.ascontiguousarray(x_test)
    results: list[dict[str, Any]] = []
    alternatives: list[dict[str, Any]] = []
    builds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "x.npy"
        np.save(data_file, x_test)
        for name in args.models.split(","):
            path = ensure_model(args.cache_dir, name)
            text = path.read_text()
            trees = MODELS[name][0]
            t0 = time.perf_counter()
            qs = QuickScorer.from_model_text(text)
            builds[name] = time.perf_counter() - t0
            engines, booster = lightgbm_engines(path)
            engines["lightgbm-capi"] = capi_engine(booster)
            engines["quickscorer"] = qs.score
            for kname, kid in available_kernels().items():
                engines[f"quickscorer[{kname}]"] = lambda x, k=kid, s=qs: s.score(x, kernel=k)
            batches = {b: np.ascontiguousarray(x_test[:b]) for b in args.batch_sizes}
            want = engines["lightgbm"](x_test)
            gaps = {e: max_gap(fn(x_test), want) for e, fn in engines.items()}
            print(
                f"{name}: QuickScorer built in {builds[name] * 1e3:.0f} ms ({qs.kernel}); "
                "measuring ...",
                flush=True,
            )
            timings = measure(engines, batches, args.reps)
            for engine, per_batch in timings.items():
                for rows, timing in per_batch.items():
                    note = f"auto = {qs.kernel}" if engine == "quickscorer" else ""
                    results.append(
                        row(
                            name,
                            engine,
                            rows,
                            trees,
                            timing,
                            timings["lightgbm"][rows],
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
                res = run_alternative(args.alt_python, alt, path, data_file, args)
                res["model"] = name
                alternatives.append(res)
                if res.get("status") != "ok":
                    print(f"  {res['status']}", flush=True)
                    continue
                for rows, timing in res["timings"][alt].items():
                    base = res["timings"]["lightgbm"][rows]
                    note = "; ".join(str(res[k]) for k in ("compile", "note") if k in res)
                    results.append(
                        row(
                            name,
                            alt,
                            int(rows),
                            trees,
                            timing,
                            base,
                            f"worker:{alt}",
                            res["max_abs_diff"],
                            note,
                        )
                    )
                    results.append(
                        row(
                            name,
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
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    doc = {
        "machine": info,
        "settings": {
            "reps": args.reps,
            "batch_sizes": args.batch_sizes,
            "models": {
                m: {"trees": MODELS[m][0], "leaves": MODELS[m][1], "features": NUM_FEATURES}
                for m in args.models.split(",")
            },
            "quickscorer_build_ms": {m: round(v * 1e3, 1) for m, v in builds.items()},
        },
        "results": results,
        "alternatives": alternatives,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scorers.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "scorers.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    s = doc["settings"]
    lines = [
        "# Scoring engines",
        "",
        f"{m['date_utc']} UTC; {m['cpu']}, {m['cores']} cores; Python {m['python']}, "
        f"LightGBM {m['lightgbm']}, numpy {m['numpy']}. Load average {m['load_average_at_start']} "
        f"at start, {m.get('load_average_at_end')} at end (other work shared the machine).",
        "",
        f"Median of {s['reps']} interleaved rounds per batch, one thread, float64 input. Each "
        "round calls every engine twice in a row, in a random order: `median ms` is the second "
        "(warm) call, `cold ms` the first, made right after another engine cooled its caches "
        "and branch predictors, as other work does in the service. `x LightGBM` is the ratio to "
        "`Booster.predict(raw_score=True)` timed in the same process (worker rows: the "
        "alternative's own process). QuickScorer builds in "
        + ", ".join(f"{k}: {v:.0f} ms" for k, v in s["quickscorer_build_ms"].items())
        + ".",
        "",
        "| model | engine | rows | median ms | p10-p90 ms | ns/row/tree | x LightGBM "
        "| cold ms | cold x LightGBM | max abs diff | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        if r["process"] != "main" and r["engine"] == "lightgbm":
            engine = f"lightgbm ({r['process']})"
        else:
            engine = r["engine"]
        gap = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2g}"
        lines.append(
            f"| {r['model']} | {engine} | {r['rows']} | {r['median_ms']:.3f} | "
            f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f} | {r['ns_per_row_tree']:.1f} | "
            f"{r['speedup_vs_lightgbm']:.1f} | {r['cold_median_ms']:.3f} | "
            f"{r['cold_speedup_vs_lightgbm']:.1f} | {gap} | {r['note']} |"
        )
    skipped = [a for a in doc["alternatives"] if a.get("status") != "ok"]
    if skipped:
        lines += ["", "Not run:", ""]
        lines += [f"- {a['model']} / {a['alternative']}: {a['status']}" for a in skipped]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
