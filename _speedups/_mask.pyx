# cython: language_level=3
"""Compiled masking and client frame encoding; twin of iotcommute/protocol/_mask_py.py (same API).

apply_mask XORs 8 bytes at a time (memcpy in/out, so no alignment assumptions), and
encode_frame writes header, key and masked payload into ONE freshly allocated bytes
object: the payload is read once and written once.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import os

cdef Py_ssize_t POOL_SIZE = 4096

cdef bytes _pool = b""
cdef Py_ssize_t _pool_pos = POOL_SIZE


def _reset_pool():
    global _pool, _pool_pos
    _pool = b""
    _pool_pos = POOL_SIZE


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


cpdef bytes new_mask_key():
    """A fresh 4-byte key from the OS CSPRNG (read 4 KiB at a time, reset after fork)."""
    global _pool, _pool_pos
    if _pool_pos >= POOL_SIZE:
        _pool = os.urandom(POOL_SIZE)
        _pool_pos = 0
    key = _pool[_pool_pos:_pool_pos + 4]
    _pool_pos += 4
    return key


cdef inline void _xor(const uint8_t* src, uint8_t* dst, Py_ssize_t n, const uint8_t* key) noexcept nogil:
    cdef uint32_t k32
    cdef uint64_t k64, w
    cdef Py_ssize_t i = 0
    memcpy(&k32, key, 4)
    k64 = (<uint64_t>k32 << 32) | k32
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= k64
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ key[i & 3]
        i += 1


def apply_mask(data, bytes key):
    """XOR ``data`` with the repeating 4-byte ``key``."""
    cdef Py_buffer view
    if len(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, view.len)
        _xor(<const uint8_t*>view.buf, <uint8_t*>PyBytes_AS_STRING(out), view.len,
             <const uint8_t*>PyBytes_AS_STRING(key))
        return out
    finally:
        PyBuffer_Release(&view)


def frame_header(int opcode, Py_ssize_t length, bint fin=True, bint rsv1=False):
    """The header of a masked client frame, without the key."""
    cdef int b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    if length < 126:
        return bytes((b0, 0x80 | length))
    if length < 65536:
        return bytes((b0, 0x80 | 126)) + length.to_bytes(2, "big")
    return bytes((b0, 0x80 | 127)) + length.to_bytes(8, "big")


def encode_frame(int opcode, payload, bint fin=True, bint rsv1=False, bytes key=None):
    """A complete masked client frame: header + key + masked payload, one allocation."""
    cdef Py_buffer view
    cdef Py_ssize_t n, hlen, i
    cdef uint8_t* out_p
    cdef uint64_t ln
    if key is None:
        key = new_mask_key()
    elif len(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        n = view.len
        hlen = 2 if n < 126 else (4 if n < 65536 else 10)
        out = PyBytes_FromStringAndSize(NULL, hlen + 4 + n)
        out_p = <uint8_t*>PyBytes_AS_STRING(out)
        out_p[0] = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (opcode & 0x0F)
        if n < 126:
            out_p[1] = 0x80 | n
        elif n < 65536:
            out_p[1] = 0x80 | 126
            out_p[2] = (n >> 8) & 0xFF
            out_p[3] = n & 0xFF
        else:
            out_p[1] = 0x80 | 127
            ln = <uint64_t>n
            for i in range(8):
                out_p[2 + i] = (ln >> (56 - 8 * i)) & 0xFF
        memcpy(out_p + hlen, PyBytes_AS_STRING(key), 4)
        _xor(<const uint8_t*>view.buf, out_p + hlen + 4, n, out_p + hlen)
        return out
    finally:
        PyBuffer_Release(&view)
