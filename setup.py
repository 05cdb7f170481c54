"""The C part of corral: built at install where a compiler and Python's headers exist.

corral.runtime._clone starts a run's processes straight inside their cgroup (Linux,
clone3 with CLONE_INTO_CGROUP). It is optional: without it (another OS, no compiler)
corral starts them through the stub that moves them in (docs/sandbox.md, "Starting
fast"), and `corral doctor` says which way is used.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(
        Extension(
            "corral.runtime._clone",
            ["src/corral/runtime/_clone.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
