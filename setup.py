"""Build script: compiles the Cython speedups, falls back to pure Python if it cannot.

IOTCOMMUTE_NO_EXTENSIONS=1      skip the extensions (pure-Python package)
IOTCOMMUTE_REQUIRE_EXTENSIONS=1 fail the build instead of falling back (used by CI)
IOTCOMMUTE_CYTHON_TRACE=1       line tracing for coverage/profiling builds
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent.resolve()
STAGE = HERE / "build" / "cysrc"

# (dotted module name, source, extra .pxd or None)
# `single-source` modules are the pure-Python twin compiled with a .pxd for types,
# exactly the file that runs as the fallback (the aiohttp reader_c/reader_py pattern).
SINGLE_SOURCE = [
    (
        "iotcommute.protocol._frames_c",
        HERE / "iotcommute" / "protocol" / "_frames_py.py",
        HERE / "_speedups" / "_frames_c.pxd",
    ),
]
# Each Cython source in _speedups/ is compiled into the package of its pure twin.
PYX_PACKAGE = {
    "_mask": "iotcommute.protocol",
    "_ticks": "iotcommute.payload",
}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false")


NO_EXTENSIONS = _truthy("IOTCOMMUTE_NO_EXTENSIONS") or sys.implementation.name != "cpython"
REQUIRE_EXTENSIONS = _truthy("IOTCOMMUTE_REQUIRE_EXTENSIONS")

FALLBACK_WARNING = (
    "iotcommute: the Cython speedups could not be built ({reason}); installing the "
    "pure-Python fallback, which is correct but several times slower. Install a C "
    "compiler and the Python headers, then reinstall, to get the compiled decoder."
)


_warned: list[str] = []


def _warn_fallback(reason: str) -> None:
    """One warning per build, however many modules failed."""
    if _warned:
        return
    _warned.append(reason)
    msg = FALLBACK_WARNING.format(reason=reason)
    warnings.warn(msg, stacklevel=2)
    print("WARNING: " + msg, file=sys.stderr)


def _stage_dir(package: str) -> Path:
    """The staged folder of a dotted package, with empty __init__.py files on the way."""
    path = STAGE
    for part in package.split("."):
        path = path / part
        path.mkdir(exist_ok=True)
        (path / "__init__.py").touch()
    return path


def _stage_sources() -> list[Extension]:
    """Lay the Cython sources out as the package tree so module names come out right."""
    if (STAGE / "iotcommute").exists():
        shutil.rmtree(STAGE / "iotcommute")
    STAGE.mkdir(parents=True, exist_ok=True)
    exts = []
    for dotted, src, pxd in SINGLE_SOURCE:
        package, _, name = dotted.rpartition(".")
        pkg = _stage_dir(package)
        shutil.copyfile(src, pkg / f"{name}.py")
        if pxd is not None and pxd.exists():
            shutil.copyfile(pxd, pkg / f"{name}.pxd")
        exts.append(Extension(dotted, [str(pkg / f"{name}.py")]))
    for pyx in sorted((HERE / "_speedups").glob("*.pyx")):
        package = PYX_PACKAGE[pyx.stem]  # a new .pyx must say where it belongs
        pkg = _stage_dir(package)
        shutil.copyfile(pyx, pkg / pyx.name)
        pxd = pyx.with_suffix(".pxd")
        if pxd.exists():
            shutil.copyfile(pxd, pkg / pxd.name)
        exts.append(Extension(f"{package}.{pyx.stem}", [str(pkg / pyx.name)]))
    return exts


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise
        _warn_fallback(f"Cython missing: {exc}")
        return []
    directives = {
        "language_level": "3",
        "boundscheck": False,
        "wraparound": False,
        "initializedcheck": False,
        "cdivision": True,
        "embedsignature": True,
    }
    macros: list[tuple[str, str | None]] = []
    if _truthy("IOTCOMMUTE_CYTHON_TRACE"):
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE", "1"))
    exts = _stage_sources()
    for ext in exts:
        ext.define_macros = macros
        ext.extra_compile_args = ["-O3"] if os.name != "nt" else []
    # One module at a time: a broken source costs only its own speedup, the others still build.
    built: list[Extension] = []
    for ext in exts:
        try:
            built += cythonize([ext], compiler_directives=directives, quiet=True)
        except Exception as exc:  # Cython errors are not one class
            if REQUIRE_EXTENSIONS:
                raise
            _warn_fallback(f"cythonize {ext.name} failed: {exc}")
    return built


class OptionalBuildExt(build_ext):
    """Compile failures fall back to pure Python with one clear warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if REQUIRE_EXTENSIONS:
            raise exc
        _warn_fallback(f"{type(exc).__name__}: {exc}")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
