"""A small reader of the Prometheus text format, for asserting on a scrape."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> dict[Key, float]:
    """{(name, labels): value} of every sample; HELP/TYPE lines are checked, not returned."""
    out: dict[Key, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert line == "" or line.startswith(("# HELP ", "# TYPE ")), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        key = (m.group(1), labels)
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(m.group(4))
    return out


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def buckets(samples: dict[Key, float], name: str, **labels: str) -> list[tuple[float, float]]:
    """[(le, cumulative count)] of a histogram series, in bound order."""
    out = []
    for (n, ls), v in samples.items():
        d = dict(ls)
        le = d.pop("le", None)
        if n == f"{name}_bucket" and le is not None and d == labels:
            out.append((float(le), v))
    return sorted(out)
