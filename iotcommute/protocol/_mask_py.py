"""Masking and frame encoding for client frames, pure-Python twin of ``_speedups/_mask.pyx``.

Both modules export the same functions with the same signatures:

    apply_mask(data, key) -> bytes
    encode_frame(opcode, payload, fin=True, rsv1=False, key=None) -> bytes
    new_mask_key() -> bytes

Mask keys come from the OS CSPRNG (``os.urandom``), read 4 KiB at a time and handed
out 4 bytes per frame: one syscall per 1024 frames instead of one per frame, still
unpredictable to the peer (RFC 6455 10.3). The pool is dropped in a forked child so
parent and child never reuse the same keys.
"""

from __future__ import annotations

import os

_POOL_SIZE = 4096
_pool = b""
_pool_pos = _POOL_SIZE


def _reset_pool() -> None:
    global _pool, _pool_pos
    _pool = b""
    _pool_pos = _POOL_SIZE


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


def new_mask_key() -> bytes:
    """A fresh, unpredictable 4-byte masking key."""
    global _pool, _pool_pos
    if _pool_pos >= _POOL_SIZE:
        _pool = os.urandom(_POOL_SIZE)
        _pool_pos = 0
    key = _pool[_pool_pos : _pool_pos + 4]
    _pool_pos += 4
    return key


def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``key`` (masking and unmasking are the same)."""
    if len(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    n = len(data)
    if n == 0:
        return b""
    # One big-int XOR instead of a Python loop per byte: C speed in pure Python.
    full = key * ((n + 3) // 4)
    m = int.from_bytes(data, "little") ^ int.from_bytes(full[:n], "little")
    return m.to_bytes(n, "little")


def frame_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False) -> bytes:
    """The header of a masked client frame, without the key."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    if length < 126:
        return bytes((b0, 0x80 | length))
    if length < 65536:
        return bytes((b0, 0x80 | 126)) + length.to_bytes(2, "big")
    return bytes((b0, 0x80 | 127)) + length.to_bytes(8, "big")


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    fin: bool = True,
    rsv1: bool = False,
    key: bytes | None = None,
) -> bytes:
    """A complete masked client frame: header + key + masked payload."""
    if key is None:
        key = new_mask_key()
    return b"".join((frame_header(opcode, len(payload), fin, rsv1), key, apply_mask(payload, key)))
