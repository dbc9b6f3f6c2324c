"""The build's one piece that pyproject.toml cannot say: the optional compiled request path.

`modeltap._speedups` (capture and record encoding in C) is built on Linux where a C compiler
is present; where it cannot be built, modeltap installs without it and runs the pure-Python
forms, which behave the same (slower on the serving core; see bench/README.md). Set
MODELTAP_REQUIRE_SPEEDUPS=1 to make a failed compile fail the install (CI does).
"""

import os
import sys

from setuptools import Extension, setup

required = os.environ.get("MODELTAP_REQUIRE_SPEEDUPS", "") not in ("", "0")
extensions = []
if sys.platform.startswith("linux") and sys.implementation.name == "cpython":
    extensions.append(
        Extension(
            "modeltap._speedups",
            ["src/modeltap/_speedups.c"],
            optional=not required,
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-missing-field-initializers"],
        )
    )

setup(ext_modules=extensions)
