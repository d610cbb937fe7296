"""How each benchmarked system is started: the table the runner reads, and a scenario's overrides.

`env` entries are added to the environment the system starts with. Placeholders in braces
(`{python}`, `{port}`, `{bundle}`, `{redis_url}`, ...) are filled by the runner for each start.
A scenario's `[systems_config.NAME]` table overrides any key of an entry, and its `args` are
appended to the command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ranking.server.experiments import ENV as GRPC_EXPERIMENTS
from ranking.server.experiments import merged
from ranking.settings import Settings

__all__ = ["DEFAULT_SYSTEMS", "MLSERVER_VENV", "system_spec"]

#: MLServer's own virtualenv (it pins packages that would fight ours).
MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", "/tmp/venv-mlserver"))

#: The floor runs on the gRPC core settings `ranking serve` applies (the same stack), merged
#: into the caller's own GRPC_EXPERIMENTS the way `ranking serve` merges them.
_SERVE_GRPC_ENV = {
    GRPC_EXPERIMENTS: merged(
        os.environ.get(GRPC_EXPERIMENTS, ""), Settings.model_fields["grpc_experiments"].default
    )
}

#: How each system is started. Scenario tables [systems_config.NAME] override any key, and
#: `args` appends to the command.
DEFAULT_SYSTEMS: dict[str, dict[str, Any]] = {
    "ranking": {
        "label": "ranking (ours)",
        "command": [
            "{python}",
            "-m",
            "ranking.cli",
            "serve",
            "--port",
            "{port}",
            "--admin-port",
            "{admin_port}",
            "--bundle",
            "{bundle}",
        ],
        "memory_args": ["--features", "user={user_features}", "--features", "item={item_features}"],
        "redis_args": ["--redis", "{redis_url}"],
        "redis_setup": [
            [
                "{python}",
                "-m",
                "ranking.cli",
                "features",
                "load",
                "--type",
                "user",
                "--file",
                "{user_features}",
                "--redis",
                "{redis_url}",
            ],
            [
                "{python}",
                "-m",
                "ranking.cli",
                "features",
                "load",
                "--type",
                "item",
                "--file",
                "{item_features}",
                "--redis",
                "{redis_url}",
            ],
        ],
        "ready": "grpc-health",
        "stats": True,
        "start_timeout_s": 600,
    },
    "floor": {
        "label": "floor (empty grpc.aio RPC)",
        "command": ["{python}", "-m", "benchmarks.baselines.floor", "--port", "{port}"],
        "env": _SERVE_GRPC_ENV,
        "ready": "grpc-health",
    },
    "naive": {
        "label": "naive (sync grpc + redis-py + Booster.predict)",
        "needs_redis": True,
        "setup": [
            [
                "{python}",
                "-m",
                "benchmarks.baselines.naive",
                "load",
                "--redis",
                "{naive_redis_url}",
                "--user-features",
                "{user_features}",
                "--item-features",
                "{item_features}",
            ],
        ],
        "command": [
            "{python}",
            "-m",
            "benchmarks.baselines.naive",
            "serve",
            "--port",
            "{port}",
            "--bundle",
            "{bundle}",
            "--redis",
            "{naive_redis_url}",
        ],
        "ready": "grpc-health",
    },
    "mlserver": {
        "label": "MLServer (OIP gRPC, LightGBM runtime, scoring only)",
        "command": [str(MLSERVER_VENV / "bin" / "mlserver"), "start", "{mlserver_dir}"],
        "ready": "oip",
        "payload": "oip",
        "start_timeout_s": 180,
    },
}


def system_spec(name: str, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The start recipe of system `name`: the default entry updated by the scenario's table."""
    spec = dict(DEFAULT_SYSTEMS.get(name, {}))
    spec.update(overrides.get(name, {}))
    if "command" not in spec:
        raise ValueError(f"system {name!r} has no command (add [systems_config.{name}])")
    return spec
