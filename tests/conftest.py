"""Shared fixtures: a small synthetic world and bundle, and a real server on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import lightgbm as lgb
import numpy as np
import pytest

from benchmarks.ports import free_port
from ranking.api.v1 import ranking_pb2_grpc
from ranking.features.memory import EntityTable, MemoryFeatureStore, read_entity_file
from ranking.features.store import FetchResult, Gathered, Lookup, Target
from ranking.scoring.bundle import FeatureSpec, write_bundle
from ranking.server.app import App
from ranking.settings import Settings
from tests.paths import LETOR

pytest_plugins = ["tests.redis_servers"]

#: Re-exported for the tests that take it from here; defined once in benchmarks/ports.py.
__all__ = ["free_port"]


USER_COLS = ("u_a", "u_b", "u_c")
ITEM_COLS = ("i_pop", "i_x", "i_y", "i_z")


@dataclass(frozen=True)
class SmallWorld:
    """A tiny world: 50 users, 500 items, a context feature and an inline feature."""

    folder: Path
    bundle: Path
    users: np.ndarray
    items: np.ndarray
    booster: lgb.Booster

    def user_row(self, uid: str) -> np.ndarray:
        return self.users[int(uid[1:])]

    def item_row(self, iid: str) -> np.ndarray:
        return self.items[int(iid[1:])]

    def matrix(
        self,
        uid: str,
        ids: list[str],
        hour: float,
        q: list[float] | None = None,
    ) -> np.ndarray:
        """The matrix the server should build (unknown ids -> NaN defaults)."""
        n = len(ids)
        out = np.full((n, 9), np.nan)
        if uid.startswith("u") and uid[1:].isdigit() and int(uid[1:]) < len(self.users):
            out[:, 0:3] = self.user_row(uid)
        for r, iid in enumerate(ids):
            if iid.startswith("i") and iid[1:].isdigit() and int(iid[1:]) < len(self.items):
                out[r, 3:7] = self.item_row(iid)
        out[:, 7] = hour
        if q is not None:
            out[:, 8] = q
        return out


FEATURES = [
    *(FeatureSpec(c, "user") for c in USER_COLS),
    *(FeatureSpec(c, "item") for c in ITEM_COLS),
    FeatureSpec("c_hour", "context", 12.0),
    FeatureSpec("q_match", "inline"),
]


def _write_csv(path: Path, prefix: str, cols: tuple[str, ...], matrix: np.ndarray) -> None:
    lines = ["id," + ",".join(cols)]
    for i, row in enumerate(matrix):
        lines.append(f"{prefix}{i}," + ",".join("" if np.isnan(v) else repr(float(v)) for v in row))
    path.write_text("\n".join(lines) + "\n")


def train_small(rng: np.random.Generator, trees: int = 20, leaves: int = 7) -> lgb.Booster:
    n_q, per_q = 60, 20
    x = rng.normal(size=(n_q * per_q, 9))
    x[rng.random(x.shape) < 0.05] = np.nan
    y = np.clip(np.nan_to_num(x[:, 3] + x[:, 0] * x[:, 4] + 0.3 * x[:, 8]) + 2, 0, 4).astype(int)
    ds = lgb.Dataset(x, y, group=[per_q] * n_q, feature_name=[f.name for f in FEATURES])
    params = {
        "objective": "lambdarank",
        "num_leaves": leaves,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "seed": 1,
        "deterministic": True,
        "num_threads": 1,
    }
    return lgb.train(params, ds, num_boost_round=trees)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> SmallWorld:
    folder = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(7)
    users = rng.normal(size=(50, 3)).astype(np.float32)
    items = rng.normal(size=(500, 4)).astype(np.float32)
    users[3, 1] = np.nan  # a stored missing value stays NaN (not zero)
    _write_csv(folder / "users.csv", "u", USER_COLS, users)
    _write_csv(folder / "items.csv", "i", ITEM_COLS, items)
    booster = train_small(rng)
    bundle = folder / "bundle"
    write_bundle(bundle, booster.model_to_string(), FEATURES, version="small-v1", prior="i_pop")
    return SmallWorld(folder, bundle, users, items, booster)


def small_settings(world: SmallWorld, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "bundle": world.bundle,
        "host": "127.0.0.1",
        "port": 0,
        "workers": 1,
        "reload_poll_s": 0,
        "features": {"user": world.folder / "users.csv", "item": world.folder / "items.csv"},
        "budget_ms": 2000.0,
        "grace_s": 2.0,
        # Tests count store lookups and calls exactly; the warm-up's synthetic queries would
        # add to them. Servers started through the CLI warm up as in production.
        "warmup_rounds": 0,
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
async def server(small_world: SmallWorld) -> AsyncIterator[App]:
    app = App(small_settings(small_world, admin_token="s3cret"))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=0.5)


@pytest.fixture
async def stub(server: App) -> AsyncIterator[ranking_pb2_grpc.RankingServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield ranking_pb2_grpc.RankingServiceStub(channel)


@pytest.fixture(scope="session")
def letor_dir() -> Iterator[Path]:
    if not (LETOR / "rank.train").exists():
        pytest.fail(f"LETOR sample missing at {LETOR}")
    yield LETOR


def small_tables(world: SmallWorld) -> dict[str, EntityTable]:
    """The small world's users and items, read from its CSV files."""
    return {
        "user": read_entity_file(world.folder / "users.csv"),
        "item": read_entity_file(world.folder / "items.csv"),
    }


class GatedStore(MemoryFeatureStore):
    """The in-process store, but every fetch or gather waits for `gate` (to hold requests in
    flight)."""

    gate: asyncio.Event

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        await self.gate.wait()
        return self.fetch_now(lookups)

    async def gather(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        *,
        timeout_s: float | None = None,
    ) -> list[Gathered]:
        await self.gate.wait()
        return self.gather_now(lookups, targets)

    @classmethod
    def of(cls, world: SmallWorld) -> GatedStore:
        """The small world's users and items, with the gate closed."""
        store = cls(small_tables(world))
        store.gate = asyncio.Event()
        return store
