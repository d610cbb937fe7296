"""Request mixes: which users, how many and which candidates, how many unknown ids.

Requests are built and serialized before the run (a pool per client process, cycled), so that
sending one costs the client a dictionary-free `bytes` hand-off to gRPC and nothing else. A
`Payload` says how to build that pool and how to read a response; `RankPayload` speaks the
service's own `Rank` RPC, and other payloads (the MLServer baseline's Open Inference Protocol)
live with the benchmarks. Payloads must be picklable: client processes rebuild their own pools.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from ranking.api.v1 import ranking_pb2
from ranking.demo.sizes import DEMO

__all__ = ["RANK_METHOD", "CandidateCount", "Payload", "RankPayload", "RequestMix"]

RANK_METHOD = "/ranking.v1.RankingService/Rank"
Popularity = Literal["uniform", "zipf"]


def _reasons_view() -> type[Message]:
    """A message type that declares only `RankResponse.degraded_reasons`, at its field number.

    Parsing a response with it reads the reasons and leaves the ranked items (the bulk of the
    bytes) as unknown fields, which upb skips without building 200 messages: about 5x cheaper
    than `RankResponse.FromString`, a few percent of the load generator's CPU per request. The
    load generator needs nothing else from a response.
    """
    real = ranking_pb2.RankResponse.DESCRIPTOR.fields_by_name["degraded_reasons"]
    if real.type != real.TYPE_STRING or not real.is_repeated:
        raise TypeError("RankResponse.degraded_reasons is no longer a repeated string")
    FieldType = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="ranking/loadgen/rank_response_reasons.proto",
        package="ranking.loadgen.view",
        syntax="proto3",
    )
    file.message_type.add(name="RankResponseReasons").field.add(
        name=real.name,
        number=real.number,
        type=FieldType.TYPE_STRING,
        label=FieldType.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    view: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("ranking.loadgen.view.RankResponseReasons")
    )
    return view


_RankResponseReasons = _reasons_view()


@dataclass(frozen=True, slots=True)
class CandidateCount:
    """Candidates per request: fixed, uniform in [low, high], or weighted choices.

    Parsed from "200", "50-200", or "50:1,200:3" (value:weight pairs), or from a TOML value:
    an int, or a table {min = 50, max = 200} or {values = [50, 200], weights = [1, 3]}.
    """

    values: tuple[int, ...]
    weights: tuple[float, ...] = ()
    uniform: bool = False

    def __post_init__(self) -> None:
        if not self.values or min(self.values) < 1:
            raise ValueError("candidate counts must be >= 1")
        if self.uniform and len(self.values) != 2:
            raise ValueError("a uniform candidate count needs exactly (low, high)")
        if self.uniform and self.values[0] > self.values[1]:
            raise ValueError("candidate count low must not exceed high")
        if self.weights and (
            len(self.weights) != len(self.values) or min(self.weights) < 0 or sum(self.weights) <= 0
        ):
            raise ValueError("candidate weights must be non-negative, one per value, not all 0")

    @classmethod
    def fixed(cls, n: int) -> CandidateCount:
        return cls((n,))

    @classmethod
    def parse(cls, spec: object) -> CandidateCount:
        """From a CLI string or a TOML value (see the class docstring)."""
        if isinstance(spec, CandidateCount):
            return spec
        if isinstance(spec, int) and not isinstance(spec, bool):
            return cls.fixed(spec)
        if isinstance(spec, Mapping):
            if "min" in spec or "max" in spec:
                return cls((int(spec["min"]), int(spec["max"])), uniform=True)
            values = tuple(int(v) for v in spec["values"])
            weights = tuple(float(w) for w in spec.get("weights", ()))
            return cls(values, weights)
        if isinstance(spec, str):
            text = spec.strip()
            if ":" in text:
                pairs = [p.split(":") for p in text.split(",")]
                return cls(tuple(int(v) for v, _ in pairs), tuple(float(w) for _, w in pairs))
            if "-" in text:
                low, high = text.split("-")
                return cls((int(low), int(high)), uniform=True)
            return cls.fixed(int(text))
        raise ValueError(f"cannot read a candidate count from {spec!r}")

    @property
    def max(self) -> int:
        return max(self.values)

    def mean(self) -> float:
        if self.uniform:
            return (self.values[0] + self.values[1]) / 2
        w = np.asarray(self.weights or [1.0] * len(self.values))
        return float(np.dot(w / w.sum(), self.values))

    def draw(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
        if self.uniform:
            return rng.integers(self.values[0], self.values[1] + 1, size=n)
        if len(self.values) == 1:
            return np.full(n, self.values[0], dtype=np.int64)
        p = np.asarray(self.weights or [1.0] * len(self.values), dtype=np.float64)
        return rng.choice(np.asarray(self.values, dtype=np.int64), size=n, p=p / p.sum())

    def describe(self) -> str:
        if self.uniform:
            return f"{self.values[0]}-{self.values[1]}"
        if len(self.values) == 1:
            return str(self.values[0])
        return ",".join(f"{v}:{w:g}" for v, w in zip(self.values, self.weights, strict=False))


@dataclass(frozen=True, slots=True)
class RequestMix:
    """What the requests of a run look like. Id spaces match the demo world ("u{N}", "i{N}").

    users / items: "uniform", or "zipf" (rank k drawn with probability proportional to
        1 / k**zipf_s, so a few hot ids dominate, as in real traffic and as a cache sees it).
    unknown_user_fraction / unknown_item_fraction: the share of users / candidates replaced by
        ids the store does not hold ("{prefix}unknown-{N}"); the service answers them with
        defaults and a degraded reason.
    pool_size: distinct prebuilt requests per client process, cycled.
    """

    n_users: int = DEMO.n_users
    n_items: int = DEMO.n_items
    user_prefix: str = "u"
    item_prefix: str = "i"
    candidates: CandidateCount = field(default_factory=lambda: CandidateCount.fixed(200))
    users: Popularity = "uniform"
    items: Popularity = "uniform"
    zipf_s: float = 1.1
    unknown_user_fraction: float = 0.0
    unknown_item_fraction: float = 0.0
    top_k: int = 0
    context: Mapping[str, float] = field(default_factory=dict)
    pool_size: int = 2048

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1:
            raise ValueError("n_users and n_items must be >= 1")
        if self.candidates.max > self.n_items:
            raise ValueError("more candidates per request than items in the id space")
        for name in ("unknown_user_fraction", "unknown_item_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.users not in ("uniform", "zipf") or self.items not in ("uniform", "zipf"):
            raise ValueError("users / items must be 'uniform' or 'zipf'")
        if self.zipf_s <= 0:
            raise ValueError("zipf_s must be > 0")
        if self.top_k < 0 or self.pool_size < 1:
            raise ValueError("top_k must be >= 0 and pool_size >= 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RequestMix:
        """From a scenario's `[mix]` (and `[world]` id-space keys) table."""
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in known}
        if "candidates" in kwargs:
            kwargs["candidates"] = CandidateCount.parse(kwargs["candidates"])
        if "context" in kwargs:
            kwargs["context"] = {str(k): float(v) for k, v in kwargs["context"].items()}
        return cls(**kwargs)

    def draw_users(self, rng: np.random.Generator, n: int) -> list[str]:
        ranks = _draw_ids(rng, n, self.n_users, self.users, self.zipf_s)
        ids = [f"{self.user_prefix}{r}" for r in ranks]
        if self.unknown_user_fraction:
            for j in np.flatnonzero(rng.random(n) < self.unknown_user_fraction):
                ids[j] = f"{self.user_prefix}unknown-{rng.integers(1 << 30)}"
        return ids

    def draw_candidates(self, rng: np.random.Generator, k: int) -> list[str]:
        """k distinct item ids (a request's ids must be unique)."""
        ranks: list[int]
        if self.items == "uniform":
            ranks = rng.choice(self.n_items, size=k, replace=False).tolist()
        else:
            ranks = _unique_zipf(rng, k, self.n_items, self.zipf_s)
        ids = [f"{self.item_prefix}{r}" for r in ranks]
        if self.unknown_item_fraction:
            for j in np.flatnonzero(rng.random(k) < self.unknown_item_fraction):
                ids[j] = f"{self.item_prefix}unknown-{j}-{rng.integers(1 << 30)}"
        return ids


@runtime_checkable
class Payload(Protocol):
    """How to build a run's requests and read its responses. Must be picklable."""

    @property
    def method(self) -> str:
        """Full gRPC method path, e.g. "/ranking.v1.RankingService/Rank"."""
        ...

    def build(self, n: int, seed: int) -> list[bytes]:
        """n serialized requests (deterministic for a seed)."""
        ...

    def degraded_reasons(self, response: bytes) -> tuple[str, ...]:
        """The degraded reasons a serialized response carries (() when none or not known)."""
        ...


@dataclass(frozen=True, slots=True)
class RankPayload:
    """`RankRequest`s drawn from a `RequestMix`."""

    mix: RequestMix = field(default_factory=RequestMix)
    method: str = RANK_METHOD

    def build(self, n: int, seed: int) -> list[bytes]:
        rng = np.random.default_rng(seed)
        sizes = self.mix.candidates.draw(rng, n)
        users = self.mix.draw_users(rng, n)
        out = []
        for j in range(n):
            req = ranking_pb2.RankRequest(
                request_id=f"lg-{seed}-{j}",
                user_id=users[j],
                top_k=self.mix.top_k,
                context=dict(self.mix.context),
            )
            # One Candidate per id, built in bulk: the fastest way upb offers.
            req.candidates.extend(
                ranking_pb2.Candidate(id=c) for c in self.mix.draw_candidates(rng, int(sizes[j]))
            )
            out.append(req.SerializeToString())
        return out

    def degraded_reasons(self, response: bytes) -> tuple[str, ...]:
        view: Any = _RankResponseReasons.FromString(response)
        return tuple(view.degraded_reasons)


@functools.lru_cache(maxsize=8)
def _zipf_cdf(n: int, s: float) -> npt.NDArray[np.float64]:
    w = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64) ** s)
    cdf: npt.NDArray[np.float64] = w / w[-1]
    cdf.setflags(write=False)
    return cdf


def _zipf(rng: np.random.Generator, size: int, space: int, s: float) -> npt.NDArray[np.int64]:
    """Ranks 0..space-1 with P(k) proportional to 1 / (k+1)**s, by inverse CDF: O(size log n)
    per draw (numpy's `choice(p=...)` rebuilds the CDF, O(n), on every call)."""
    idx = np.searchsorted(_zipf_cdf(space, s), rng.random(size), side="right")
    return np.minimum(idx, space - 1).astype(np.int64)


def _draw_ids(
    rng: np.random.Generator, n: int, space: int, dist: Popularity, s: float
) -> npt.NDArray[np.int64]:
    if dist == "uniform":
        return rng.integers(0, space, size=n)
    return _zipf(rng, n, space, s)


def _unique_zipf(rng: np.random.Generator, k: int, space: int, s: float) -> list[int]:
    """k distinct Zipf-distributed ids: draw with replacement, keep first occurrences."""
    seen: dict[int, None] = {}
    while len(seen) < k:
        for r in _zipf(rng, 2 * k, space, s).tolist():
            seen.setdefault(r)
            if len(seen) == k:
                break
    return list(seen)
