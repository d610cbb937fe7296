"""MLServer baseline: the same LightGBM model behind the Open Inference Protocol (gRPC).

MLServer lives in its own virtualenv (`benchmarks/setup_mlserver.sh`, run by `install_mlserver`
when it is missing); this module installs it there, writes its model folder and settings, and
builds the requests in the service's environment:
each `ModelInferRequest` carries the very feature matrix (candidates x features, FP64) that the
service would assemble for the same Rank request, so MLServer does strictly less work (no
feature fetch, no assembly, no sorting).

The OIP messages are encoded by hand (a dozen lines of protobuf wire format) rather than with
generated code, so the service's environment needs no MLServer packages.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.world import BenchWorld, MatrixBuilder
from ranking.api.v1 import ranking_pb2
from ranking.loadgen import RankPayload

__all__ = [
    "MODEL_NAME",
    "OipPayload",
    "install_mlserver",
    "model_ready_request",
    "write_mlserver_folder",
]

MODEL_NAME = "ranker"
SETUP_SCRIPT = Path(__file__).resolve().parents[1] / "setup_mlserver.sh"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL_READY_METHOD = "/inference.GRPCInferenceService/ModelReady"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field_no: int, payload: bytes) -> bytes:
    """A length-delimited field: strings, bytes, sub-messages and packed repeated scalars."""
    return _varint(field_no << 3 | 2) + _varint(len(payload)) + payload


def infer_request(model: str, matrix: np.ndarray) -> bytes:
    """ModelInferRequest{model_name=1, inputs=5[{name=1, datatype=2, shape=3, contents=5
    {fp64_contents=7}}]} for a 2-D float64 matrix."""
    rows, cols = matrix.shape
    contents = _ld(7, np.ascontiguousarray(matrix, dtype="<f8").tobytes())
    tensor = (
        _ld(1, b"input-0")
        + _ld(2, b"FP64")
        + _ld(3, _varint(rows) + _varint(cols))
        + _ld(5, contents)
    )
    return _ld(1, model.encode()) + _ld(5, tensor)


def model_ready_request(model: str = MODEL_NAME) -> bytes:
    """ModelReadyRequest{name=1}; the response is ModelReadyResponse{ready=1} (b"\\x08\\x01")."""
    return _ld(1, model.encode())


@dataclass(frozen=True)
class OipPayload:
    """The same requests as `rank` (same seed, same draws), turned into feature matrices."""

    rank: RankPayload
    world: BenchWorld
    model: str = MODEL_NAME
    method: str = INFER_METHOD

    def build(self, n: int, seed: int) -> list[bytes]:
        builder = MatrixBuilder(self.world)
        out = []
        for raw in self.rank.build(n, seed):
            req = ranking_pb2.RankRequest.FromString(raw)
            x = builder.matrix(req.user_id, [c.id for c in req.candidates], dict(req.context))
            out.append(infer_request(self.model, x))
        return out

    def degraded_reasons(self, response: bytes) -> tuple[str, ...]:
        return ()


def write_mlserver_folder(
    folder: Path, world: BenchWorld, grpc_port: int, http_port: int, metrics_port: int
) -> Path:
    """MLServer's settings and one model folder, as its docs show them; returns `folder`."""
    model_dir = folder / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / "model.txt"
    if not target.exists():
        target.write_bytes(world.model_file.read_bytes())
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "debug": False,
                "host": "127.0.0.1",
                "grpc_port": grpc_port,
                "http_port": http_port,
                "metrics_port": metrics_port,
            },
            indent=1,
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "mlserver_lightgbm.LightGBMModel",
                "parameters": {"uri": "./model.txt", "version": "v1"},
            },
            indent=1,
        )
    )
    return folder


def install_mlserver(venv: Path, timeout_s: float = 600.0) -> str:
    """Create MLServer's virtualenv at `venv` unless it has `bin/mlserver`; "" or why not."""
    exe = venv / "bin" / "mlserver"
    if exe.exists():
        return ""
    try:
        proc = subprocess.run(
            ["bash", str(SETUP_SCRIPT), str(venv)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"installing mlserver took over {timeout_s:g} s"
    if proc.returncode != 0 or not exe.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return "could not install mlserver: " + " | ".join(tail)
    return ""
