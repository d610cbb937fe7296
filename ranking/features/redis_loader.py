"""Bulk-load entity feature vectors into Redis in the layout `RedisFeatureStore` reads.

Values are packed for a whole batch at once with numpy (header broadcast + float32 payload) and
written with a non-transactional pipeline, one round trip per `batch` keys (per node in cluster
mode). Re-running is idempotent: SET overwrites, and the schema key is rewritten with the same
content. The schema key is written first: a store started mid-load with a changed column list
sees the old vectors as schema mismatches (reported, never misread) rather than the reverse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
from redis.cluster import RedisCluster
from tqdm import tqdm

from ranking.features.redis_store import (
    DEFAULT_CLUSTER_BUCKETS,
    FORMAT_FLOAT32,
    HEADER_BYTES,
    KeyLayout,
    header_for,
    schema_id,
)

__all__ = ["load_entities", "pack_rows"]

logger = logging.getLogger(__name__)

SyncClient = redis.Redis | RedisCluster
Progress = bool | Callable[[int], None]


def pack_rows(columns: Sequence[str], matrix: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Pack rows as values: shape (n, 8 + 4 * len(columns)) uint8, one value per row."""
    m = np.asarray(matrix, dtype="<f4")
    if m.ndim != 2 or m.shape[1] != len(columns):
        raise ValueError(f"matrix must have shape (n, {len(columns)}), got {m.shape}")
    out = np.empty((m.shape[0], HEADER_BYTES + 4 * m.shape[1]), dtype=np.uint8)
    out[:, :HEADER_BYTES] = np.frombuffer(header_for(columns), dtype=np.uint8)
    out[:, HEADER_BYTES:] = np.ascontiguousarray(m).view(np.uint8)
    return out


def load_entities(
    client_or_url: SyncClient | str,
    namespace: str,
    entity_type: str,
    ids: Sequence[str],
    columns: Sequence[str],
    matrix: npt.ArrayLike,
    *,
    ttl_s: float | None = None,
    batch: int = 1000,
    progress: Progress = True,
    buckets: int | None = None,
    cluster: bool = False,
) -> int:
    """Write one vector per id; return the number of entities written.

    client_or_url: a sync `redis.Redis` / `redis.cluster.RedisCluster` (not closed here), or a
        URL (a client is made and closed; `cluster` says which kind).
    ttl_s: expire each entity key after this long (the schema key never expires).
    progress: True for a tqdm bar, False for none, or a callable given the running count.
    buckets: hash-tag buckets of the reader's `KeyLayout`; default, like the store's: 16 for a
        cluster (a `RedisCluster` client or `cluster=True`), else 0 (plain keys).
    """
    if batch <= 0:
        raise ValueError("batch must be > 0")
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError("ttl_s must be > 0")
    if len(set(columns)) != len(columns):
        raise ValueError("column names must be unique")
    packed = pack_rows(columns, matrix)
    if packed.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for {packed.shape[0]} rows")
    owned = isinstance(client_or_url, str)
    client: SyncClient
    if isinstance(client_or_url, str):
        client = (
            RedisCluster.from_url(client_or_url) if cluster else redis.Redis.from_url(client_or_url)
        )
    else:
        client = client_or_url
    if buckets is None:
        buckets = DEFAULT_CLUSTER_BUCKETS if isinstance(client, RedisCluster) else 0
    layout = KeyLayout(namespace, buckets)
    bar: tqdm[Any] | None = None
    try:
        schema = {
            "columns": list(columns),
            "schema_id": schema_id(columns),
            "format": FORMAT_FLOAT32,
        }
        client.set(layout.schema_key(entity_type), json.dumps(schema))
        px = None if ttl_s is None else max(1, round(ttl_s * 1000))
        if progress is True:
            bar = tqdm(total=len(ids), unit="entity", desc=f"load {entity_type}")
        written = 0
        for start in range(0, len(ids), batch):
            chunk_ids = ids[start : start + batch]
            keys = layout.keys(entity_type, chunk_ids)
            pipe = client.pipeline(transaction=False)
            for key, row in zip(keys, packed[start : start + batch], strict=True):
                pipe.set(key, row.tobytes(), px=px)
            pipe.execute()
            written += len(keys)
            if bar is not None:
                bar.update(len(keys))
            elif callable(progress):
                progress(written)
        logger.info("loaded %d %s entities into %s", written, entity_type, namespace)
        return written
    finally:
        if bar is not None:
            bar.close()
        if owned:
            client.close()
