"""Socket-free helpers for Session tests: an owner recording every callback, and message
builders in the server's byte form (compact JSON, "type" first)."""

from __future__ import annotations

from typing import Any

import orjson

from iotcommute import payload
from iotcommute.client.session import OP_BINARY, OP_TEXT, Session


class Recorder:
    """A Session owner whose callbacks record what they got (set to None to disable)."""

    def __init__(self, *callbacks: str) -> None:
        self.ticks: list[dict[str, Any]] = []
        self.lists: list[list[dict[str, Any]]] = []
        self.rows: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
        self.messages: list[str | bytes] = []
        self.commands: list[dict[str, Any]] = []
        self.gaps: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.on_tick: Any = None
        self.on_ticks: Any = None
        self.on_tick_rows: Any = None
        self.on_message: Any = None
        self.on_command: Any = lambda c, w: self.commands.append(c)
        self.on_gap: Any = lambda g, w: self.gaps.append(g)
        self.on_error: Any = lambda e, w: self.errors.append(e)
        for name in callbacks:
            if name == "on_tick":
                self.on_tick = lambda t, w: self.ticks.append(t)
            elif name == "on_ticks":
                self.on_ticks = lambda ts, w: self.lists.append(list(ts))
            elif name == "on_tick_rows":
                self.on_tick_rows = lambda f, rs, w: self.rows.append((f, list(rs)))
            elif name == "on_message":
                self.on_message = lambda m, w: self.messages.append(m)
            else:
                raise ValueError(name)


def msg(**fields: Any) -> str:
    """A server message: compact JSON with "type" first (docs/protocol.md, item 10)."""
    return orjson.dumps(fields).decode()


def tick(pos: int, device: str = "d1", **data: Any) -> str:
    return msg(type="tick", device=device, position=pos, ts=1.5, data=data or {"v": pos})


def tick_dict(pos: int, device: str = "d1") -> dict[str, Any]:
    return {"type": "tick", "device": device, "position": pos, "ts": 1.5, "data": {"v": pos}}


def batch(records: list[tuple[int, str]]) -> bytes:
    return bytes(payload.encode_batch([tick_dict(p, d) for p, d in records]))


def welcome(position: int = 0, log: str | None = None) -> str:
    fields: dict[str, Any] = {"type": "welcome", "version": 1, "role": "client", "device": None}
    fields.update(user="u", position=position, server="test")
    if log is not None:
        fields["log"] = log
    return msg(**fields)


def sent(session: Session) -> list[Any]:
    """The frames the session asks to write: JSON text decoded, binary as bytes."""
    out: list[Any] = []
    for op, data in session.frames_to_send():
        out.append(orjson.loads(data) if op == OP_TEXT else data)
        assert op in (OP_TEXT, OP_BINARY)
    return out


def connect(session: Session, position: int = 0, log: str | None = None) -> list[Any]:
    """Open + welcome; returns the frames sent in answer."""
    session.opened()
    session.receive([welcome(position, log)])
    return sent(session)
