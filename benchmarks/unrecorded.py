"""`ranking serve` with nothing recorded: the "metrics off" side of the R200 overhead runs.

    python -m benchmarks.unrecorded serve ...   # the same arguments as `ranking serve`

The service always records its calls (the stats row is what GetStats, the stage table and
/metrics read; `--metrics-port` only decides whether /metrics is served), so there is no
setting that turns recording off. This program serves with every call's record replaced by
one whose lap/ranked/end are C no-ops, so the difference in server CPU per request against
`ranking serve` is what recording costs through the whole server. Nothing is counted, so it
has no stage table. Benchmark instrument only (benchmarks/scenarios/r200-metrics.toml).

The replacement is made when this module runs as the program (`__main__`) and when the
`--workers` processes, started with "spawn", run it again as `__mp_main__`; importing it (as
tests/benchmarks/test_imports.py does) changes nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from ranking.cli import main
from ranking.core import service


class NoRecord:
    """Records nothing; a str's `format` ignores its arguments, so no Python frame runs."""

    __slots__ = ()
    lap = "".format
    ranked = "".format
    end = "ok".format


_NO_RECORD = NoRecord()


def _begin_call(telemetry: Any, metadata: Any = None) -> Any:
    return _NO_RECORD


if __name__ in ("__main__", "__mp_main__"):
    service.begin_call = _begin_call  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
