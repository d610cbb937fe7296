"""The dashboard and the alerting rules load, are checked by promtool, and name real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from ranking.features.cache import CachedFeatureStore
from ranking.features.hedging import HedgedFeatureStore
from ranking.features.memory import MemoryFeatureStore
from ranking.telemetry.exposition import render
from ranking.telemetry.state import ServiceState, _read_store
from ranking.telemetry.stats import Stats
from tests.conftest import SmallWorld, small_tables
from tests.telemetry.servers import ALERTS, DASHBOARD, binary

_NAME = re.compile(r"\b(ranking_[a-z_]+)\b")
_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def every_family(world: SmallWorld) -> set[str]:
    """Metric families a server with a cache in front of two hedged replicas exports."""
    tables = small_tables(world)
    store = CachedFeatureStore(
        HedgedFeatureStore([MemoryFeatureStore(tables), MemoryFeatureStore(tables)])
    )
    state = ServiceState("v", "quickscorer", 0.0, 0, 0, {"limit": 16.0, "inflight": 0.0})
    _read_store(store, state)
    text = render(Stats(), [(0, state)])
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def names_in(expr: str) -> set[str]:
    return {_SUFFIX.sub("", n) for n in _NAME.findall(expr)} - {"ranking_"}


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = binary("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=ALERTS.parent, capture_output=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel's PromQL, with Grafana's variables filled in, is valid (promtool parses it
    as a recording rule)."""
    promtool = binary("promtool")
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    rules = [
        {"record": f"dashboard:expr{i}", "expr": e.replace("$__rate_interval", "1m").replace(
            "$job", ".*")}
        for i, e in enumerate(exprs)
    ]  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_and_alerts_name_only_exported_metrics(small_world: SmallWorld) -> None:
    exported = every_family(small_world)
    used = set().union(*map(names_in, dashboard_exprs()))
    used |= names_in(ALERTS.read_text())
    assert used, "no metric names found"
    assert used <= exported, sorted(used - exported)
    # What the issue asks the dashboard to show, by the metric each needs.
    for needed in (
        "ranking_requests_total",
        "ranking_request_duration_seconds",
        "ranking_stage_duration_seconds",
        "ranking_shed_total",
        "ranking_degraded_total",
        "ranking_cache_lookups_total",
        "ranking_hedges_sent_total",
        "ranking_model_info",
    ):
        assert needed in used, needed
