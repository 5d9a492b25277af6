"""Which partition a device belongs to: `partition(device_id, n)` (docs/protocol.md, section 14).

The same function on every server process and in every client (a consumer-group member
computes a tick's partition from its device id to commit per partition), so it is
specified exactly: 32-bit FNV-1a over the UTF-8 bytes of the device id, modulo the number
of partitions. FNV-1a because it is a few lines in any language, needs no seed, and
spreads short ids well; it is not cryptographic (nothing here needs that).
"""

from __future__ import annotations

FNV32_OFFSET = 0x811C9DC5
FNV32_PRIME = 0x01000193


def stable_hash(device_id: str) -> int:
    """32-bit FNV-1a of the UTF-8 encoding of `device_id` (an unsigned int < 2**32)."""
    h = FNV32_OFFSET
    for b in device_id.encode("utf-8"):
        h = ((h ^ b) * FNV32_PRIME) & 0xFFFFFFFF
    return h


def partition(device_id: str, partitions: int) -> int:
    """The partition of a device's records: stable_hash(device_id) % partitions."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return stable_hash(device_id) % partitions
