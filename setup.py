"""Build configuration beyond pyproject.toml: the optional compiled fast paths.

``tether._speedups`` (CPython 3.11+) is built when a C compiler and Python's headers are
there; when the build fails, tether installs without it and runs its pure-Python fast paths.
"""

import platform
import sys

from setuptools import Extension, setup

ext_modules = []
if platform.python_implementation() == "CPython" and sys.version_info >= (3, 11):
    ext_modules.append(
        Extension(
            "tether._speedups",
            sources=["src/tether/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        )
    )

setup(ext_modules=ext_modules)
