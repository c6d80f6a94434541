"""Build configuration beyond pyproject.toml: the optional compiled fast paths.

``tether._speedups`` (CPython 3.11+) is built when a C compiler and Python's headers are
there; when the build fails, tether installs without it and runs its pure-Python fast paths.
"""

import hashlib
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "src/tether/_speedups.c"
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

ext_modules = []
if platform.python_implementation() == "CPython" and sys.version_info >= (3, 11):
    ext_modules.append(
        Extension(
            "tether._speedups",
            sources=[SOURCE],
            optional=True,
            # The source's digest, built in: the tests compare it with the source, so a
            # failed rebuild (optional: it only warns) cannot leave an old build in use.
            define_macros=[("TETHER_SOURCE_SHA256", f'"{DIGEST}"')],
            # For size: in a request the fast paths run cold (the server ran on the core in
            # between), and what they cost there follows the code lines they touch, not the
            # instructions (bench/cold.py: 17 fewer lines per request than -O2, 0.06 us more
            # per check-out + give-back in a tight loop). -fno-plt: calls into CPython go
            # through the GOT directly, not through a PLT stub each (some 10 fewer lines).
            extra_compile_args=[
                "-Os",
                "-fno-plt",
                "-Wall",
                "-Wno-missing-field-initializers",
            ],
        )
    )

setup(ext_modules=ext_modules)
