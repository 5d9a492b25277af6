"""Authoring aid for ticks_v1.json: run once, review the diff, commit the JSON.

The tests never call this: the vectors are the fixed bytes both decoders are held to, so a
codec change that alters the wire format shows up as a failing vector, not a silent rewrite.
Corrupt vectors are derived from valid ones by the edits listed here, then frozen as hex.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from iotcommute.exceptions import DecodeError
from iotcommute.payload._ticks_py import decode_batch, encode_batch

HERE = Path(__file__).parent


def tick(device: str, position: int, ts: float, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tick", "device": device, "position": position, "ts": ts, "data": data}


VALID: list[tuple[str, list[dict[str, Any]], dict[str, str] | None]] = [
    ("empty", [], None),
    ("one_tick_one_f64", [tick("dev-0001", 1, 1764128635.123456, {"temperature": 21.5})], None),
    (
        "all_types",
        [
            tick(
                "dev-0001",
                42,
                1764128635.25,
                {"t": 21.5, "n": -7, "s": 1000, "on": True, "x": 0.75},
            ),
            tick(
                "dev-0001",
                43,
                1764128635.5,
                {"t": -0.0, "n": 2**63 - 1, "s": -(2**31), "on": False, "x": -1.5},
            ),
        ],
        {"s": "i32", "x": "f32"},
    ),
    (
        "three_devices_shared_table",
        [
            tick("dev-0001", 100, 1.0, {"temperature": 20.0, "battery": 97}),
            tick("dev-0002", 101, 2.0, {"temperature": 20.5, "battery": 12}),
            tick("dev-0001", 102, 3.0, {"temperature": 21.0, "battery": 96}),
            tick("séance-ü", 103, 4.0, {"temperature": -40.0, "battery": 0}),
        ],
        None,
    ),
    ("no_fields", [tick("d", 2**64 - 1, 0.0, {}), tick("d", 0, 1e300, {})], None),
    (
        "unicode_field_names",
        [tick("dev-0001", 7, 1764128635.0, {"température": 1.25, "湿度": 3})],
        None,
    ),
]


def corrupt_cases(base: bytes) -> list[tuple[str, bytes]]:
    """Edits of the `three_devices_shared_table` batch (offsets per docs/protocol-binary.md)."""
    b = bytearray(base)
    cases: list[tuple[str, bytes]] = [
        ("empty_buffer", b""),
        ("truncated_header", bytes(b[:13])),
        ("bad_magic", b"\xc1TKX" + bytes(b[4:])),
        ("json_text", b'{"type":"tick"}'),
        ("version_2", bytes(b[:4]) + b"\x02" + bytes(b[5:])),
        ("version_0", bytes(b[:4]) + b"\x00" + bytes(b[5:])),
        ("reserved_flag", bytes(b[:5]) + b"\x01" + bytes(b[6:])),
        ("too_many_devices", bytes(b[:6]) + struct.pack("<H", 4097) + bytes(b[8:])),
        ("too_many_fields", bytes(b[:8]) + struct.pack("<H", 256) + bytes(b[10:])),
        ("too_many_ticks", bytes(b[:10]) + struct.pack("<I", 0xFFFFFFFF) + bytes(b[14:])),
        ("ticks_count_exceeds_buffer", bytes(b[:10]) + struct.pack("<I", 5) + bytes(b[14:])),
        ("truncated_rows", bytes(b[:-1])),
        ("trailing_byte", bytes(b) + b"\x00"),
        ("truncated_in_device_table", bytes(b[:18])),
        ("device_count_overreads_field_table", bytes(b[:6]) + struct.pack("<H", 60) + bytes(b[8:])),
    ]
    # device 0 ("dev-0001", 8 bytes at offset 15): bad UTF-8, empty name, duplicate id
    bad = bytearray(b)
    bad[15] = 0xFF
    cases.append(("device_bad_utf8", bytes(bad)))
    bad = bytearray(b)
    bad[14] = 0
    cases.append(("device_empty_name", bytes(bad)))
    bad = bytearray(b)
    bad[15 + 9 + 7] = ord("1")  # "dev-0002" -> "dev-0001"
    cases.append(("device_duplicate", bytes(bad)))
    # field table starts after the 3 devices
    ftab = 14 + (1 + 8) * 2 + 1 + len("séance-ü".encode())
    bad = bytearray(b)
    bad[ftab] = 9
    cases.append(("field_unknown_type", bytes(bad)))
    bad = bytearray(b)
    bad[ftab + 2] = 0xC3  # lone lead byte
    cases.append(("field_bad_utf8", bytes(bad)))
    # rows: device index of the 2nd row -> 3 (table has 3), bool value 2 in all_types
    rows = len(b) - 4 * (18 + 8 + 8)
    bad = bytearray(b)
    bad[rows + 34] = 3
    cases.append(("row_device_index_out_of_range", bytes(bad)))
    return cases


def main() -> None:
    valid = []
    batches = {}
    for name, ticks, types in VALID:
        raw = encode_batch(ticks, types)
        batches[name] = raw
        decoded = decode_batch(raw)
        valid.append(
            {
                "name": name,
                "types": types,
                "hex": raw.hex(),
                "ticks": decoded,
                "json": [json.dumps(t, ensure_ascii=False, separators=(",", ":")) for t in decoded],
            }
        )
    corrupt = []
    cases = corrupt_cases(batches["three_devices_shared_table"])
    allt = bytearray(batches["all_types"])
    allt[-1 - 4] = 2  # "on" of the last row (f32 "x" follows it)
    cases.append(("row_bool_not_0_or_1", bytes(allt)))
    for name, raw in cases:
        try:
            decode_batch(raw)
        except DecodeError as exc:
            corrupt.append(
                {
                    "name": name,
                    "hex": raw.hex(),
                    "error": "DecodeError",
                    "message": exc.message,
                    "position": exc.position,
                }
            )
        else:
            raise SystemExit(f"corrupt case {name} decoded without error")
    doc = {
        "format": "iotcommute tick batch v1 (docs/protocol-binary.md)",
        "valid": valid,
        "corrupt": corrupt,
    }
    out = HERE / "ticks_v1.json"
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(valid)} valid, {len(corrupt)} corrupt")


if __name__ == "__main__":
    main()
