"""A consumer-group member's state, sans-IO (docs/protocol.md, section 14.3).

The session (session.py) owns one `GroupState` when the client was made with ``group=``.
It keeps what the protocol asks a member to keep: the partitions it owns (from ``assign``
and ``revoke``), per owned partition the last position delivered to the user and the last
one the user finished with, and the one ``commit`` in flight. The server keeps the group's
committed positions; nothing here survives the connection: after a reconnect the member
subscribes again and the server says what it owns and where each partition resumes.

Why per partition and not one cursor: a partition assigned later is replayed from its
committed position while the others go on, so positions on a member's connection are
increasing per partition only.
"""

from __future__ import annotations

import re
from typing import Any

from ..partition import partition

__all__ = ["COMMIT_EVERY", "GROUP_NAME", "GroupState"]

GROUP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: a commit goes out once this many ticks were processed since the last one (the engine
#: also flushes once a second); at most one commit is in flight at a time
COMMIT_EVERY = 100


class _Part:
    """One owned partition during one tenure (one assign until its revoke)."""

    __slots__ = ("committed", "delivered", "done", "sent", "tenure")

    def __init__(self, tenure: int, position: int) -> None:
        self.tenure = tenure
        self.delivered = position  # highest position handed to the user (duplicate filter)
        self.done = position  # highest position the user finished with (what may be committed)
        self.sent = position  # highest position sent in a commit
        self.committed = position  # highest position the server accepted


class GroupState:
    """Ownership and positions of one member; see the module docstring."""

    def __init__(self, name: str, commit_every: int = COMMIT_EVERY, manual: bool = False) -> None:
        if not isinstance(name, str) or not GROUP_NAME.match(name):
            raise ValueError("group must be 1-64 characters of A-Z a-z 0-9 _ -")
        self.name = name
        #: commits follow only `done_upto` (the user's sink committed), never the callbacks
        self.manual = manual
        self.commit_every = commit_every
        self.member: str | None = None  # the member id the server drew (per connection)
        self.of = 0  # the number of partitions of the log
        self.owned: dict[int, _Part] = {}
        #: partitions revoked by the server and not yet released with a last commit
        self.releasing: dict[int, _Part] = {}
        self.sub_id: int | None = None  # the id of this connection's group subscribe
        self._of_device: dict[Any, int] = {}
        self._tenures = 0
        self._commit_seq = 0
        #: the commit in flight: its id and {partition: (position, tenure)}
        self.inflight: tuple[str, dict[int, tuple[int, int]]] | None = None
        self.since = 0  # ticks finished since the last commit was sent
        self._accepted = 0  # ticks delivered and not yet counted as finished
        self.dropped = 0  # ticks not delivered: repeats, or of a partition not owned
        self.commits_sent = self.commits_refused = 0

    # ------------------------------------------------------------------ ticks
    def partition_of(self, device: Any) -> int:
        """The partition of a device's records (cached; -1 before the first assign)."""
        p = self._of_device.get(device)
        if p is None:
            if not self.of or not isinstance(device, str):
                return -1
            p = self._of_device[device] = partition(device, self.of)
        return p

    def accept(self, device: Any, position: Any) -> bool:
        """Whether a tick is delivered: its partition is owned and it is past what this
        tenure delivered already (a repeat after a re-assign is dropped)."""
        st = self.owned.get(self.partition_of(device))
        if st is None or type(position) is not int or position <= st.delivered:
            self.dropped += 1
            return False
        st.delivered = position
        self._accepted += 1
        return True

    def all_done(self) -> None:
        """Every tick delivered so far was processed (the callbacks returned)."""
        if self.manual:
            self._accepted = 0
            return
        if self._accepted:
            self.since += self._accepted
            self._accepted = 0
            for st in self.owned.values():
                st.done = st.delivered

    def took(self, device: Any, position: Any) -> None:
        """The user finished with one tick (the iterator: it asked for the next one)."""
        if self.manual:
            return
        st = self.owned.get(self.partition_of(device))
        if st is not None and type(position) is int and st.done < position <= st.delivered:
            st.done = position
            self.since += 1

    def done_upto(self, positions: Any) -> None:
        """(manual) The user stored every tick it was given of each partition up to its
        position ({partition: position}); capped at what this tenure delivered, so a
        position stored in an earlier tenure never covers ticks not yet delivered again."""
        for p, pos in dict(positions).items():
            st = (self.owned.get(p) or self.releasing.get(p)) if type(p) is int else None
            if st is None or type(pos) is not int:
                continue
            pos = min(pos, st.delivered)
            if pos > st.done:
                st.done = pos
                self.since = max(self.since, self.commit_every)  # due: commit it now

    # ------------------------------------------------------------------ ownership
    def assign(self, msg: dict[str, Any]) -> list[int]:
        """Take the partitions of an ``assign``; returns them (sorted)."""
        of = msg.get("of")
        if type(of) is int and of > 0 and of != self.of:
            self.of = of
            self._of_device = {}
        got: list[int] = []
        for item in msg.get("partitions") or ():
            if not isinstance(item, dict):
                continue
            p, pos = item.get("partition"), item.get("position")
            if type(p) is not int or type(pos) is not int:
                continue
            self._tenures += 1
            self.owned[p] = _Part(self._tenures, pos)
            got.append(p)
        return sorted(got)

    def revoke(self, parts: Any) -> list[int]:
        """Revoked partitions stop taking ticks; their state waits in `releasing` for the
        last commit (`release_message`). Returns those that were owned (sorted)."""
        gone = sorted({p for p in parts or () if type(p) is int and p in self.owned})
        for p in gone:
            self.releasing[p] = self.owned.pop(p)
        return gone

    def release_message(self) -> dict[str, Any] | None:
        """The ``commit`` with ``"release": true`` that hands the revoked partitions back:
        what was finished of each (its last position, even if unchanged), after which the
        server gives them to their next owner at once (protocol.md section 14.3). It is
        not the commit in flight: its answer changes nothing here."""
        if not self.releasing or not self.member:
            self.releasing.clear()
            return None
        parts = [
            {"partition": p, "position": max(st.done, st.committed)}
            for p, st in sorted(self.releasing.items())
        ]
        self.releasing.clear()
        self._commit_seq += 1
        return {"type": "commit", "id": f"commit-{self._commit_seq}", "partitions": parts,
                "release": True}  # fmt: skip

    def lost(self) -> list[int]:
        """The connection ended: the server released our partitions (and forgot our
        member id), so everything is dropped; returns what was owned."""
        gone = sorted(self.owned)
        self.owned.clear()
        self.releasing.clear()
        self.member = None
        self.sub_id = None
        self.inflight = None
        self.since = self._accepted = 0
        return gone

    # ------------------------------------------------------------------ commits
    @property
    def due(self) -> bool:
        """Enough was processed for a commit, and none is in flight."""
        return self.since >= self.commit_every and self.inflight is None

    def commit_message(self) -> dict[str, Any] | None:
        """The next ``commit`` (owned partitions whose finished position moved), or None
        when there is nothing to commit or a commit is still in flight."""
        if self.inflight is not None or not self.member:
            return None
        todo = {p: (st.done, st.tenure) for p, st in self.owned.items() if st.done > st.sent}
        self.since = 0
        if not todo:
            return None
        for p, (pos, _) in todo.items():
            self.owned[p].sent = pos
        self._commit_seq += 1
        cid = f"commit-{self._commit_seq}"
        self.inflight = (cid, todo)
        self.commits_sent += 1
        parts = [{"partition": p, "position": pos} for p, (pos, _) in sorted(todo.items())]
        return {"type": "commit", "id": cid, "partitions": parts}

    def committed(self, msg: dict[str, Any]) -> list[int]:
        """A ``committed`` answer; returns the partitions refused (not owned any more)."""
        inflight = self.inflight
        if inflight is None or msg.get("id") != inflight[0]:
            return []
        self.inflight = None
        tenures = inflight[1]
        for item in msg.get("partitions") or ():
            if not isinstance(item, dict):
                continue
            p, pos = item.get("partition"), item.get("position")
            st = self.owned.get(p) if type(p) is int else None
            sent = tenures.get(p) if type(p) is int else None
            if st is not None and sent is not None and st.tenure == sent[1] and type(pos) is int:
                st.committed = max(st.committed, pos)
        refused = [p for p in msg.get("refused") or () if type(p) is int]
        self.commits_refused += len(refused)
        return refused

    def commit_failed(self, msg_id: Any) -> bool:
        """An ``error`` answered the commit in flight: its positions are sent again later.
        False when the error is not about our commit."""
        inflight = self.inflight
        if inflight is None or msg_id != inflight[0]:
            return False
        self.inflight = None
        for p, (_, tenure) in inflight[1].items():
            st = self.owned.get(p)
            if st is not None and st.tenure == tenure:
                st.sent = st.committed  # sent again by the engine's next flush
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "member": self.member,
            "partitions": {p: st.committed for p, st in sorted(self.owned.items())},
            "commits_sent": self.commits_sent,
            "commits_refused": self.commits_refused,
            "ticks_dropped": self.dropped,
        }
