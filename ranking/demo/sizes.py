"""The demo's default sizes, defined once: the model's shape and the world's id spaces.

Read by the settings (`RANKING_DEMO_*`), the demo builders, `ranking rank`'s demo request and
the load generator's default mix, so a client's ids always fall in the server's world. Kept
free of heavy imports: the settings and the CLI import it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DEMO", "DemoSize"]


@dataclass(frozen=True)
class DemoSize:
    """Trees x leaves of the demo model, and users x items of the demo world."""

    trees: int = 500
    leaves: int = 63
    n_users: int = 10_000
    n_items: int = 50_000


#: The defaults everyone uses unless told otherwise.
DEMO: Final = DemoSize()
