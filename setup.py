"""Build hook for the C extensions; all other metadata lives in pyproject.toml."""

import numpy
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ranking.scoring._quickscorer",
            sources=["ranking/scoring/_quickscorer.c"],
            include_dirs=[numpy.get_include()],
            extra_compile_args=["-O3", "-std=c11", "-fno-math-errno"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        ),
        # Counting a finished call into the stats row (ranking/telemetry/call.py).
        Extension(
            "ranking.telemetry._counting",
            sources=["ranking/telemetry/_counting.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        ),
    ],
)
