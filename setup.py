"""Build script: compiles the Cython speedups, falls back to pure Python if it cannot.

IOTCOMMUTE_NO_EXTENSIONS=1      skip the extensions (pure-Python package)
IOTCOMMUTE_REQUIRE_EXTENSIONS=1 fail the build instead of falling back (used by CI)
IOTCOMMUTE_CYTHON_TRACE=1       line tracing for coverage/profiling builds
IOTCOMMUTE_KEEP_SYMBOLS=1       keep symbols in the extension modules (profilers, debuggers)

Extension modules are linked stripped (gcc/clang; MSVC writes no debug info by default), except
development builds (`python setup.py build_ext --inplace`, `pip install -e`) and the two
switches above. The sdist carries the Cython-generated C (_speedups/c/<module>.c, written by
the sdist command), so an sdist builds the compiled modules where Cython is not installed.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

HERE = Path(__file__).parent.resolve()
STAGE = HERE / "build" / "cysrc"
# Cython-generated C, present only in an sdist (never in the repository: *.c is ignored)
GENERATED_C = HERE / "_speedups" / "c"

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
    "_columnar": "iotcommute.payload",
    "_deliver": "iotcommute.payload",
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


CYTHON_DIRECTIVES: dict[str, object] = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}


def _compile_args() -> list[str]:
    return ["-O3"] if os.name != "nt" else []


def _from_generated_c() -> list[Extension] | None:
    """The sdist's generated C, one Extension per module; None when it is not there."""
    names = [ext.name for ext in _stage_sources()]
    sources = {name: GENERATED_C / f"{name}.c" for name in names}
    if not all(path.exists() for path in sources.values()):
        return None
    return [
        Extension(name, [str(path.relative_to(HERE))], extra_compile_args=_compile_args())
        for name, path in sources.items()
    ]


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        generated = _from_generated_c()
        if generated is not None and not _truthy("IOTCOMMUTE_CYTHON_TRACE"):
            return generated  # an sdist without Cython: compile the C it carries
        if REQUIRE_EXTENSIONS:
            raise
        _warn_fallback(f"Cython missing: {exc}")
        return []
    directives = dict(CYTHON_DIRECTIVES)
    macros: list[tuple[str, str | None]] = []
    if _truthy("IOTCOMMUTE_CYTHON_TRACE"):
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE", "1"))
    exts = _stage_sources()
    for ext in exts:
        ext.define_macros = macros
        ext.extra_compile_args = _compile_args()
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


def _strip_link_args() -> list[str]:
    """Linker flags that drop symbol tables and debug info (gcc/clang; none for MSVC)."""
    if os.name == "nt" or _truthy("IOTCOMMUTE_KEEP_SYMBOLS") or _truthy("IOTCOMMUTE_CYTHON_TRACE"):
        return []
    if sys.platform == "darwin":
        return ["-Wl,-S", "-Wl,-x"]  # Apple ld: no debug info, no local symbols
    return ["-Wl,--strip-all"]


class OptionalBuildExt(build_ext):
    """Compile failures fall back to pure Python with one clear warning; wheels are stripped."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        # development builds (build_ext --inplace, pip install -e) keep symbols for profilers
        if not (self.inplace or getattr(self, "editable_mode", False)):
            ext.extra_link_args = [*(ext.extra_link_args or []), *_strip_link_args()]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if REQUIRE_EXTENSIONS:
            raise exc
        _warn_fallback(f"{type(exc).__name__}: {exc}")


class SdistWithC(sdist):
    """Adds the Cython-generated C to the sdist, so it installs where Cython is missing."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        from Cython.Build import cythonize  # building an sdist needs Cython, always

        out = Path(base_dir) / GENERATED_C.relative_to(HERE)
        out.mkdir(parents=True, exist_ok=True)
        for ext in _stage_sources():
            (built,) = cythonize([ext], compiler_directives=CYTHON_DIRECTIVES, quiet=True)
            shutil.copyfile(built.sources[0], out / f"{ext.name}.c")


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "sdist": SdistWithC},
)
