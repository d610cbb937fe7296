"""Hot reload of the shadow model: its bundle folder is watched like the live one.

The rule is the live bundle's (`ranking/server/app.py`, `App._watch`): poll `model.txt` and
`schema.json` (inode, mtime, size) every `RANKING_RELOAD_POLL_S`; when they changed and then
held still for one more poll, load the bundle off the event loop (the strict parser, the
child-process LightGBM load check, compile, smoke-score: `load_shadow`) and swap it in on the
loop. A bundle that fails is logged and counted (`shadow_reload_failures`); the old shadow, or
none, goes on, and live traffic never sees any of it (the shadow is only ever scored after a
response went out). A shadow that could not be loaded at start is picked up once its folder
holds a good bundle.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path

from ranking.flywheel.hook import Flywheel
from ranking.flywheel.shadow import load_shadow

__all__ = ["fingerprint", "reload_shadow", "watch_shadow"]

log = logging.getLogger(__name__)


def fingerprint(folder: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What the watch compares: the bundle files' inode, mtime and size (a symlinked folder
    is followed to its target)."""
    out = []
    for name in ("model.txt", "schema.json"):
        try:
            st = (folder / name).stat()
        except OSError:
            continue
        out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


async def reload_shadow(
    fly: Flywheel,
    folder: Path,
    *,
    engine: str = "auto",
    cpu_share: float = 0.1,
    executor: Executor | None = None,
) -> bool:
    """Load the shadow bundle at `folder` off the loop and swap it in; False (old shadow kept,
    counted) when it cannot be used."""
    loop = asyncio.get_running_loop()
    shadow = await loop.run_in_executor(
        executor, lambda: load_shadow(folder, engine=engine, cpu_share=cpu_share)
    )
    if shadow is None:
        fly.shadow_stats.reload_failures += 1
        kept = fly.shadow.version if fly.shadow is not None else "none"
        log.error("shadow reload refused, keeping shadow %s", kept)
        return False
    fly.set_shadow(shadow)
    log.info("now shadowing model %s", shadow.version)
    return True


async def watch_shadow(
    fly: Flywheel,
    folder: Path,
    every_s: float,
    *,
    engine: str = "auto",
    cpu_share: float = 0.1,
    executor: Executor | None = None,
) -> None:
    """Poll `folder` forever (cancel the task to stop); reload the shadow when it changed."""
    loaded = fingerprint(folder)
    previous = loaded
    while True:
        await asyncio.sleep(every_s)
        now = fingerprint(folder)
        settled, previous = now == previous, now
        if now == loaded or not settled:
            continue
        loaded = now
        try:
            await reload_shadow(fly, folder, engine=engine, cpu_share=cpu_share, executor=executor)
        except Exception:  # never let the watch die: the next change is tried again
            fly.shadow_stats.reload_failures += 1
            log.exception("shadow reload failed")
