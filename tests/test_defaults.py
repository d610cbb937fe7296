"""Each default has one definition: settings, the CLI and the components read the same one."""

from __future__ import annotations

import argparse
import inspect
from typing import get_args

from ranking.cli import build_parser
from ranking.client import demo_request
from ranking.demo.model import build_demo_bundle
from ranking.demo.sizes import DEMO
from ranking.demo.world import make_world
from ranking.limits.limiter import LIMITER_KINDS, build_limiter
from ranking.loadgen import RequestMix
from ranking.scoring.scorer import ENGINES
from ranking.settings import Settings


def _choices(command: str, flag: str) -> tuple[str, ...]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    assert action.choices is not None
    return tuple(action.choices)


def test_limiter_kinds_are_defined_once() -> None:
    assert get_args(Settings.model_fields["limiter"].annotation) == LIMITER_KINDS
    assert _choices("serve", "--limiter") == LIMITER_KINDS
    for kind in LIMITER_KINDS:  # every listed kind builds
        build_limiter(kind)


def test_engines_are_defined_once() -> None:
    assert get_args(Settings.model_fields["engine"].annotation) == ENGINES
    assert _choices("serve", "--engine") == ENGINES


def _default(fn: object, name: str) -> object:
    return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]


def test_demo_sizes_are_defined_once() -> None:
    s = Settings()
    assert (s.demo_trees, s.demo_leaves, s.demo_users, s.demo_items) == (
        DEMO.trees,
        DEMO.leaves,
        DEMO.n_users,
        DEMO.n_items,
    )
    assert (_default(build_demo_bundle, "trees"), _default(build_demo_bundle, "leaves")) == (
        DEMO.trees,
        DEMO.leaves,
    )
    for fn in (build_demo_bundle, make_world, demo_request):
        assert (_default(fn, "n_users"), _default(fn, "n_items")) == (DEMO.n_users, DEMO.n_items)
    mix = RequestMix()
    assert (mix.n_users, mix.n_items) == (DEMO.n_users, DEMO.n_items)
