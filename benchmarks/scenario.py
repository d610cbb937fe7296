"""Scenarios as data: one TOML file per scenario in benchmarks/scenarios/.

name = "R200"
systems = ["ranking", "floor", "naive", "mlserver"]   # the first is the system under test
[world]   n_users, n_items, trees, leaves, seed       # the demo world and model shape
[mix]     any `ranking.loadgen.RequestMix` field       # candidates, users = "zipf", ...
[load]    arrivals, duration_s, warmup_s, deadline_ms, fixed_rates, ladder, bisect_steps,
          rps_per_client_process, channels_per_process, max_send_lag_p99_ms
[store]   kind = "memory" | "redis"
[slo]     p99_ms (the budget the ladder searches under), max_error_ratio, max_partial_ratio
[[slo.require]]  {system, at_rps, p99_ms} and/or {system, min_max_rps}: missed -> exit 1
[[slo.target]]   the same shape; reported as met / missed, fatal only with --strict
[systems_config.NAME]  command / setup / ready / args overriding the defaults in run.py;
                 strings may use {port} {python} {bundle} {model} {user_features}
                 {item_features} {redis_url} {n_users} {n_items} {trees} {leaves}
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.world import WorldSpec
from ranking.loadgen import RequestMix

__all__ = ["Check", "LoadPlan", "Scenario", "find_scenario", "load_scenario"]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


@dataclass(frozen=True)
class Check:
    """`p99 <= p99_ms at at_rps` and/or `max rate within the budget >= min_max_rps`."""

    system: str
    at_rps: float | None = None
    p99_ms: float | None = None
    min_max_rps: float | None = None

    def describe(self) -> str:
        parts = []
        if self.at_rps is not None and self.p99_ms is not None:
            parts.append(f"p99 <= {self.p99_ms:g} ms at {self.at_rps:g} req/s")
        if self.min_max_rps is not None:
            parts.append(f"max rate within budget >= {self.min_max_rps:g} req/s")
        return f"{self.system}: " + " and ".join(parts)


@dataclass(frozen=True)
class LoadPlan:
    arrivals: str = "poisson"
    duration_s: float = 20.0
    warmup_s: float = 2.0
    deadline_ms: float = 1000.0
    fixed_rates: tuple[float, ...] = (300.0,)
    ladder: tuple[float, ...] = (100.0, 300.0, 500.0, 700.0, 1000.0)
    bisect_steps: int = 2
    rps_per_client_process: float = 700.0
    max_client_processes: int = 2
    channels_per_process: int = 4
    max_send_lag_p99_ms: float = 2.0
    retries_when_client_behind: int = 1
    server_warmup_s: float = 2.0
    server_warmup_rps: float = 50.0


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    systems: tuple[str, ...]
    world: WorldSpec
    mix: RequestMix
    load: LoadPlan
    store: str
    budget_p99_ms: float
    max_error_ratio: float
    max_partial_ratio: float
    require: tuple[Check, ...]
    targets: tuple[Check, ...]
    system_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def under_test(self) -> str:
        return self.systems[0]

    def quick(self, duration_s: float = 3.0) -> Scenario:
        """The same scenario with short runs and no bisection (for trying the harness)."""
        from dataclasses import replace

        load = replace(
            self.load,
            duration_s=min(self.load.duration_s, duration_s),
            warmup_s=min(self.load.warmup_s, duration_s / 4),
            bisect_steps=0,
            server_warmup_s=min(self.load.server_warmup_s, 1.0),
        )
        return replace(self, load=load)


def _checks(items: list[dict[str, Any]], default_system: str) -> tuple[Check, ...]:
    out = []
    for item in items:
        check = Check(
            system=str(item.get("system", default_system)),
            at_rps=_opt_float(item.get("at_rps")),
            p99_ms=_opt_float(item.get("p99_ms")),
            min_max_rps=_opt_float(item.get("min_max_rps")),
        )
        if (check.at_rps is None) != (check.p99_ms is None) or (
            check.at_rps is None and check.min_max_rps is None
        ):
            raise ValueError(f"a check needs at_rps with p99_ms, or min_max_rps: {item}")
        out.append(check)
    return tuple(out)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def load_scenario(path: Path) -> Scenario:
    with path.open("rb") as f:
        data = tomllib.load(f)
    try:
        systems = tuple(data.get("systems", ["ranking", "floor", "naive", "mlserver"]))
        if not systems:
            raise ValueError("systems must name at least the system under test")
        world = WorldSpec(**data.get("world", {}))
        mix_fields = dict(data.get("mix", {}))
        mix_fields.setdefault("n_users", world.n_users)
        mix_fields.setdefault("n_items", world.n_items)
        mix = RequestMix.from_mapping(mix_fields)
        load_data = dict(data.get("load", {}))
        for key in ("fixed_rates", "ladder"):
            if key in load_data:
                load_data[key] = tuple(float(r) for r in load_data[key])
        load = LoadPlan(**load_data)
        if sorted(load.ladder) != list(load.ladder) or not load.ladder:
            raise ValueError("load.ladder must be a non-empty ascending list of rates")
        slo = data.get("slo", {})
        store = str(data.get("store", {}).get("kind", "memory"))
        if store not in ("memory", "redis"):
            raise ValueError("store.kind must be 'memory' or 'redis'")
        return Scenario(
            name=str(data.get("name", path.stem)),
            path=path,
            description=str(data.get("description", "")),
            systems=systems,
            world=world,
            mix=mix,
            load=load,
            store=store,
            budget_p99_ms=float(slo.get("p99_ms", 10.0)),
            max_error_ratio=float(slo.get("max_error_ratio", 0.001)),
            max_partial_ratio=float(slo.get("max_partial_ratio", 0.01)),
            require=_checks(slo.get("require", []), systems[0]),
            targets=_checks(slo.get("target", []), systems[0]),
            system_overrides={k: dict(v) for k, v in data.get("systems_config", {}).items()},
        )
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def find_scenario(name_or_path: str) -> Path:
    """A scenario by path, or by name in benchmarks/scenarios/ ("r200" -> r200.toml)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = SCENARIO_DIR / f"{name_or_path.lower()}.toml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(x.stem for x in SCENARIO_DIR.glob("*.toml")))
    raise FileNotFoundError(f"no scenario {name_or_path!r} (known: {known})")
