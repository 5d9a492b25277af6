"""Smoke test of an installed iotcommute (a wheel under cibuildwheel, an sdist in .ci/run).

Imports the package and round-trips the codecs and the frame layer, in well under a second.
Run it from a directory without the source tree, so it tests the installed copy:

    python .ci/smoke.py [--require-speedups] [--require-stripped]

--require-stripped checks that the extension modules carry no symbol table or debug info
(ELF, so Linux only; elsewhere it is skipped).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path


def elf_section_names(path: Path) -> set[str]:
    """Section names of a 64- or 32-bit little/big-endian ELF file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not ELF")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        shoff = struct.unpack_from(end + "Q", data, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    else:
        shoff = struct.unpack_from(end + "I", data, 0x20)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name = struct.unpack_from(end + "I", data, base)[0]
        if is64:
            offset, size = struct.unpack_from(end + "QQ", data, base + 0x18)
        else:
            offset, size = struct.unpack_from(end + "II", data, base + 0x10)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    strings = data[str_off : str_off + str_size]
    names = set()
    for i in range(shnum):
        name = section(i)[0]
        names.add(strings[name : strings.index(b"\0", name)].decode())
    return names


def check_stripped() -> None:
    import iotcommute

    if not sys.platform.startswith("linux"):
        print("smoke: strip check skipped (not ELF)")
        return
    modules = sorted(Path(iotcommute.__file__).parent.rglob("*.so"))
    assert modules, "no extension modules installed"
    for mod in modules:
        extra = elf_section_names(mod) & {".symtab", ".debug_info", ".debug_line"}
        assert not extra, f"{mod.name} is not stripped: {sorted(extra)}"
    print(f"smoke: {len(modules)} extension modules stripped")


def main() -> int:
    import iotcommute
    from iotcommute import payload
    from iotcommute.protocol import ClientProtocol

    if "--require-speedups" in sys.argv and not iotcommute.SPEEDUPS:
        print("smoke: the compiled speedups are missing", file=sys.stderr)
        return 1
    ticks = [
        {
            "type": "tick",
            "device": f"sim-{i:04d}",
            "position": i + 1,
            "ts": 1764128635.0 + i,
            "data": {"temperature": 20.5 + i, "rssi": -60 - i, "ok": i % 2 == 0},
        }
        for i in range(100)
    ]
    assert payload.decode_batch(payload.encode_batch(ticks)) == ticks
    assert payload.loads(payload.dumps(ticks[0])) == ticks[0]
    proto = ClientProtocol("127.0.0.1:8765", "/v1/stream")
    proto.send_request()
    assert proto.data_to_send().startswith(b"GET /v1/stream HTTP/1.1\r\n")
    if "--require-stripped" in sys.argv:
        check_stripped()
    where = iotcommute.__file__
    impl = "compiled" if iotcommute.SPEEDUPS else "pure Python"
    print(f"smoke OK: iotcommute {iotcommute.__version__} ({impl}) from {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
