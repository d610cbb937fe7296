"""`Ids`: a request's entity ids as one UTF-8 buffer and offsets, not one Python str each.

The native request decoder produces ids this way straight from the wire, and the cache's native
index looks them up in the same form, so a request's candidates never become Python objects
unless something needs them as strings (a cache miss, an error message, the response). Id `i`
is `data[offsets[i]:offsets[i + 1]]`, valid UTF-8 (protobuf's `string` rule, checked by the
decoder).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from typing import overload

import numpy as np
import numpy.typing as npt

__all__ = ["Ids"]


class Ids(Sequence[str]):
    """n ids; `offsets` is int64 of length n + 1 with offsets[0] == 0 and non-decreasing."""

    __slots__ = ("_strs", "data", "offsets")

    def __init__(self, data: bytes, offsets: npt.NDArray[np.int64]) -> None:
        self.data = data
        self.offsets = offsets
        self._strs: list[str] | None = None

    @classmethod
    def from_strs(cls, ids: Iterable[str]) -> Ids:
        strs = list(ids)
        encoded = [s.encode() for s in strs]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        out = cls(b"".join(encoded), offsets)
        out._strs = strs
        return out

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self.tolist()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        """The ids as Python strings (decoded once, then kept)."""
        if self._strs is None:
            data, bounds = self.data, self.offsets.tolist()
            self._strs = [data[a:b].decode() for a, b in pairwise(bounds)]
        return self._strs

    def take(self, positions: npt.NDArray[np.int64]) -> list[str]:
        """The ids at `positions` as Python strings, decoding only those (a cache's misses)."""
        if self._strs is not None:
            return list(map(self._strs.__getitem__, positions.tolist()))
        data, off = self.data, self.offsets
        starts, ends = off[positions].tolist(), off[positions + 1].tolist()
        return [data[a:b].decode() for a, b in zip(starts, ends, strict=True)]

    def __repr__(self) -> str:
        return f"Ids({len(self)} ids)"
