"""Only the C helper of the candle core; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the core uses the same
computation in Python (aggregate/speedups.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "aggregate._speedups",
            ["aggregate/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
