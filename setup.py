"""Build the compiled implementation, ``swapd._native._core`` (the rest is in pyproject.toml).

The extension is optional: when it cannot be built (no compiler, no Python headers, no liblz4
headers) the install still succeeds, the compiler's error is written to
``swapd/_native/BUILD_ERROR.txt``, and ``SWAPD_IMPL=auto`` runs the pure-Python reference with a
warning that quotes it (see swapd/impl.py).  ``SWAPD_NATIVE_CFLAGS`` adds compiler flags (the
AddressSanitizer run of the slow tests builds a separate copy with it).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
NATIVE = HERE / "swapd" / "_native"
ERROR_FILE = "BUILD_ERROR.txt"


class RecordingBuildExt(build_ext):
    """build_ext that records a failure in the package instead of failing the install."""

    def build_extension(self, ext: Extension) -> None:
        targets = {NATIVE / ERROR_FILE,
                   Path(self.get_ext_fullpath(ext.name)).parent / ERROR_FILE}
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, DistutilsPlatformError, OSError
            msg = f"building {ext.name} failed: {type(exc).__name__}: {exc}\n"
            print(f"WARNING: {msg}WARNING: swapd will run its pure-Python implementation")
            for t in targets:
                if t.parent.is_dir():
                    t.write_text(msg)
            return
        for t in targets:
            t.unlink(missing_ok=True)


extra = shlex.split(os.environ.get("SWAPD_NATIVE_CFLAGS", ""))
setup(
    ext_modules=[
        Extension(
            "swapd._native._core",
            sources=["swapd/_native/_core.c"],
            libraries=["lz4", "z"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fno-strict-aliasing", *extra],
            extra_link_args=[f for f in extra if f.startswith("-fsanitize")],
            optional=False,
        ),
    ],
    cmdclass={"build_ext": RecordingBuildExt},
)
