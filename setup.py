"""Build hook for the C extensions; all other metadata lives in pyproject.toml."""

import numpy
from setuptools import Extension, setup


def extension(name: str, source: str, depends: tuple[str, ...] = ()) -> Extension:
    return Extension(
        name,
        sources=[source],
        depends=list(depends),
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O3", "-std=c11", "-fno-math-errno"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


setup(
    ext_modules=[
        extension("ranking.scoring._quickscorer", "ranking/scoring/_quickscorer.c"),
        # The rank kernel (64 rows per pass; ranking/scoring/README.md).
        extension("ranking.scoring._rankscorer", "ranking/scoring/_rankscorer.c"),
        # The request codec (decoder + encoder; the wire code is in _wire_core.h).
        extension(
            "ranking.server._wire", "ranking/server/_wire.c", ("ranking/server/_wire_core.h",)
        ),
        # Top-k ranking and id uniqueness for the core.
        extension("ranking.core._order", "ranking/core/_order.c"),
        # The feature cache's index and the Redis MGET/reply helpers (ranking/features/README.md).
        extension("ranking.features._index", "ranking/features/_index.c"),
        # Counting a finished call into the stats row (ranking/telemetry/call.py).
        extension("ranking.telemetry._counting", "ranking/telemetry/_counting.c"),
        # Round-robin connection balancing across the workers' shared port (eBPF).
        extension("ranking.server._reuseport", "ranking/server/_reuseport.c"),
        # The served-feature log's copy into its shared ring (ranking/flywheel/ring.py).
        extension("ranking.flywheel._ring", "ranking/flywheel/_ring.c"),
    ],
)
