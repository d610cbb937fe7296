"""The service's own `GetStats`, read by the benchmarks: counters and per-stage means."""

from __future__ import annotations

from typing import Any

__all__ = ["get_stats", "stage_delta"]


def get_stats(target: str) -> dict[str, Any] | None:
    """The service's GetStats (counters and stage means) from its admin port `target`, or
    None when it has none."""
    import grpc

    try:
        from ranking.api.v1 import admin_pb2, admin_pb2_grpc
    except ImportError:
        return None
    with grpc.insecure_channel(target) as channel:
        try:
            resp = admin_pb2_grpc.AdminServiceStub(channel).GetStats(
                admin_pb2.GetStatsRequest(), timeout=2.0
            )
        except grpc.RpcError:
            return None
    return {
        "counters": dict(resp.counters),
        # Wall time per stage, and the event loop thread's CPU time per stage ("<stage> cpu").
        "stage_mean_us": {
            **dict(resp.stage_mean_us),
            **{f"{k} cpu": v for k, v in resp.stage_cpu_mean_us.items()},
        },
        "engine": resp.engine,
        "workers": resp.workers,
        "model_version": resp.model_version,
    }


def stage_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """Mean server time per OK request in each stage over one run, from two GetStats."""
    if not before or not after:
        return {}
    n0 = before["counters"].get("ok", 0.0)
    n1 = after["counters"].get("ok", 0.0)
    if n1 <= n0:
        return {}
    out = {}
    for stage, mean1 in after["stage_mean_us"].items():
        mean0 = before["stage_mean_us"].get(stage, 0.0)
        out[stage] = (mean1 * n1 - mean0 * n0) / (n1 - n0)
    return out
