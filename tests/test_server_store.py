"""Log stores (store/base.py contract) and the Log window over them: positions never reused,
durable before visible, seek by value over holes."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcommute.server import Log
from iotcommute.server.store import Entry, LogStore, MemoryStore, SqliteStore, StoreError


def _e(offset: int, device: str = "d", pid: str | None = None) -> Entry:
    return Entry(offset, device, float(offset), b'{"n":%d}' % offset, pid)


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], LogStore]:
    kind = request.param

    def make() -> LogStore:
        return MemoryStore(keep=True) if kind == "memory" else SqliteStore(tmp_path / "s.db")

    return make


def test_store_contract(store_factory: Callable[[], LogStore]) -> None:
    async def main() -> None:
        st = store_factory()
        log_id = await st.open()
        assert log_id and st.last_offset(0) == 0
        await st.append(0, [_e(1), _e(2, pid='"p-1"'), _e(5)])  # holes are allowed
        await st.append(0, [_e(6)])
        assert st.last_offset(0) == 6
        with pytest.raises((StoreError, ValueError)):
            await st.append(0, [_e(6)])  # an offset is never stored twice
        assert [e.offset for e in await st.read(0, 2, 10)] == [5, 6]  # seek by value
        assert [e.offset for e in await st.read(0, 0, 2)] == [1, 2]
        assert (await st.read(0, 0, 10))[1] == _e(2, pid='"p-1"')
        await st.append(1, [_e(3)])  # partitions count separately
        assert (st.last_offset(0), st.last_offset(1)) == (6, 3)
        await st.trim(0, 6)
        await st.append(0, [_e(7)])
        assert [e.offset for e in await st.read(0, 0, 10)] == [6, 7]
        await st.close()

    asyncio.run(main())


def test_sqlite_keeps_identity_and_mark_when_everything_is_trimmed(tmp_path: Path) -> None:
    async def main() -> None:
        st = SqliteStore(tmp_path / "s.db")
        log_id = await st.open()
        await st.append(0, [_e(1), _e(2)])
        await st.trim(0, 3)
        await st.close()
        again = SqliteStore(tmp_path / "s.db")
        assert await again.open() == log_id
        assert again.last_offset(0) == 2 and await again.read(0, 0, 10) == []
        await again.close()

    asyncio.run(main())


def test_sqlite_settings_are_wal_and_full_sync(tmp_path: Path) -> None:
    async def main() -> None:
        st = SqliteStore(tmp_path / "s.db")
        await st.open()
        await st.close()

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_memory_logs_draw_a_new_identity() -> None:
    assert Log().log_id != Log().log_id


def test_log_over_a_store_with_holes_seeks_by_value(tmp_path: Path) -> None:
    """A log written with holes (an older release dropped a batch): resuming from a
    position just before a hole gets the next stored record, and new positions continue
    above the highest one."""

    async def main() -> None:
        st = SqliteStore(tmp_path / "s.db")
        await st.open()
        await st.append(0, [_e(p, "a" if p % 2 else "b") for p in (1, 2, 3, 140, 142, 143)])
        await st.close()
        log = Log(retain=100, db=tmp_path / "s.db")
        await log.open()
        assert (log.first_position, log.last_position) == (1, 143)
        assert [r.position for r in log.read(140)] == [142, 143]
        assert [r.position for r in log.read(3, {"b"})] == [140, 142]
        assert log.scan(141, None, 1) == (log.read(141, None, 1), 142)
        assert log.append("a", {"n": 0}, 1.0) == 144
        await log.drain()
        assert log.read(143)[0].data == {"n": 0}
        await log.close()

    asyncio.run(main())


def test_durable_before_visible(tmp_path: Path) -> None:
    """A record appended to a durable log is not readable, not at the tail and not
    acknowledged until the store's transaction committed."""

    async def main() -> None:
        log = Log(retain=100, db=tmp_path / "s.db")
        await log.open()
        acks: list[object] = []
        pos = log.append("d", {"n": 1}, 1.0)
        log.when_durable(pos, acks.append)
        assert (pos, log.last_position, log.read(0), acks) == (1, 0, [], [])
        await log.wait(0)
        assert log.last_position == 1 and acks == [None]
        db = sqlite3.connect(tmp_path / "s.db")
        assert db.execute("SELECT position FROM records").fetchall() == [(1,)]
        db.close()
        await log.close()

    asyncio.run(main())


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.integers(1, 4), min_size=1, max_size=40),
    devices=st.lists(st.sampled_from("ab"), min_size=40, max_size=40),
    retain=st.integers(1, 30),
    after=st.integers(0, 130),
    want=st.sets(st.sampled_from("ab"), min_size=1),
)
def test_window_over_holes_matches_a_model(
    steps: list[int], devices: list[str], retain: int, after: int, want: set[str]
) -> None:
    """Positions with holes (loaded from a store), then dense appends: reads, scans and
    gaps equal a plain model over the same positions."""
    positions = list(itertools.accumulate(steps))
    entries = [_e(p, devices[i]) for i, p in enumerate(positions)]

    async def main() -> None:
        st_ = MemoryStore(keep=True)
        await st_.open()
        st_.append_now(0, entries)
        log = Log(retain=retain, store=st_, history=3)
        await log.open()
        for k in range(5):  # dense appends after the holes
            log.append("ab"[k % 2], {"n": k}, 1.0)
        model = [(e.offset, e.device) for e in entries] + [
            (positions[-1] + k + 1, "ab"[k % 2]) for k in range(5)
        ]
        kept = model[-retain:]
        trimmed = model[: len(model) - len(kept)]
        assert (log.first_position, log.last_position) == (kept[0][0], model[-1][0])
        assert [r.position for r in log.read(after, None, 1000)] == [
            p for p, _ in kept if p > after
        ]
        assert [r.position for r in log.read(after, want, 1000)] == [
            p for p, d in kept if p > after and d in want
        ]
        lost = [p for p, d in trimmed if p > after and d in want]
        gap = log.gap(after, want)
        # What came before the records loaded at open (retain + history of them) is
        # unknown to the server: a cursor from there gets a gap whatever it subscribes to.
        known_from = positions[max(0, len(positions) - (retain + 3))]
        unknown = after < known_from - 1 and after < kept[0][0] - 1
        if not lost and not unknown:
            assert gap is None
        elif unknown:
            assert gap is not None and gap[:2] == (after, kept[0][0] - 1)
            assert gap[2] >= len(lost)
        else:
            assert gap is not None and gap[:2] == (after, kept[0][0] - 1)
            assert gap[2] >= len(lost)  # exact within the trim history, else an upper bound

    asyncio.run(main())


def test_sqlite_refuses_a_path_it_cannot_open_at_once(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(tmp_path / "no-such-dir" / "log.sqlite")
    (tmp_path / "junk").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(tmp_path / "junk")
