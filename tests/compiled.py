"""The one place tests get a compiled module and its pure twin.

A compiled module missing from the build makes its cases skip, unless
``IOTCOMMUTE_REQUIRE_EXTENSIONS=1`` (CI): then a missing build fails them instead of hiding.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE = os.environ.get("IOTCOMMUTE_REQUIRE_EXTENSIONS", "") not in ("", "0")


def compiled(dotted: str) -> ModuleType | None:
    """The compiled module ``dotted`` (``iotcommute.protocol._frames_c``), None if unbuilt."""
    try:
        return importlib.import_module(dotted)
    except ImportError:  # depends on the build
        return None


def skip_unless_built(*mods: ModuleType | None) -> pytest.MarkDecorator:
    """Skip where a module is missing, except under REQUIRE (the test then fails on it)."""
    missing = any(m is None for m in mods)
    return pytest.mark.skipif(missing and not REQUIRE, reason="compiled module not built")


def built(mod: ModuleType | None) -> ModuleType:
    """``mod``, asserting it exists (reached only where skip_unless_built let the test run)."""
    assert mod is not None, "IOTCOMMUTE_REQUIRE_EXTENSIONS is set but a compiled module is missing"
    return mod


def twins(pure: ModuleType, dotted: str) -> list[object]:
    """pytest params ``py`` (the pure twin) and ``c`` (the compiled module, skipped if unbuilt)."""
    c = compiled(dotted)
    return [pytest.param(pure, id="py"), pytest.param(c, id="c", marks=skip_unless_built(c))]
