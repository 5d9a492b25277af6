"""Selector: the compiled frame reader and masking when built, else the pure twins.

``SPEEDUPS`` is True only when BOTH compiled modules are in use.
``IOTCOMMUTE_NO_EXTENSIONS=1`` forces the pure-Python code.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import TYPE_CHECKING

from .._env import NO_EXTENSIONS, warn_fallback
from . import _frames_py, _mask_py

logger = logging.getLogger("iotcommute.protocol.frames")

frames_impl: ModuleType = _frames_py
mask_impl: ModuleType = _mask_py

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._frames_py import FrameReader, close_code_valid
    from ._mask_py import apply_mask, encode_frame, frame_header, new_mask_key

    SPEEDUPS = False
else:
    try:
        from . import _frames_c, _mask  # type: ignore[attr-defined]
        from ._frames_c import FrameReader, close_code_valid  # type: ignore[no-redef]
        from ._mask import (  # type: ignore[no-redef]
            apply_mask,
            encode_frame,
            frame_header,
            new_mask_key,
        )

        frames_impl = _frames_c
        mask_impl = _mask
        SPEEDUPS = True
    except ImportError:  # pragma: no cover - depends on the build
        warn_fallback("frame reader")
        from ._frames_py import FrameReader, close_code_valid
        from ._mask_py import apply_mask, encode_frame, frame_header, new_mask_key

        SPEEDUPS = False

OP_CONT = _frames_py.OP_CONT
OP_TEXT = _frames_py.OP_TEXT
OP_BINARY = _frames_py.OP_BINARY
OP_CLOSE = _frames_py.OP_CLOSE
OP_PING = _frames_py.OP_PING
OP_PONG = _frames_py.OP_PONG

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "SPEEDUPS",
    "FrameReader",
    "apply_mask",
    "close_code_valid",
    "encode_frame",
    "frame_header",
    "frames_impl",
    "mask_impl",
    "new_mask_key",
]
