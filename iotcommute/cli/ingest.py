"""Stream binary tick batches into rolled Parquet files in DIR, exactly once.

The files are the checkpoint: on start, ingest resumes after the highest position its
files hold (no checkpoint file), so a killed and restarted ingest writes every position
of the log exactly once into the files. Each file is written under a temporary name,
fsynced and renamed: a final name only ever holds a complete file. Rows not yet rolled
into a file when the process dies come again from the server on restart.

Authenticate as for `iotcommute listen` (--token, or --key and --device; prefer the
environment for secrets). Ticks a Parquet column cannot hold (string or nested values)
are reported on stderr and not written. SIGTERM and Ctrl-C commit the rows buffered so
far into a last file before exiting.

With --group NAME, ingest is a consumer-group member (a server on a shared log: serve
--log nats://...): the group's server keeps the resume point, and the member commits a
partition's position to it only once the rows up to it are in a renamed, fsynced file.
Rows of a partition the member loses in a rebalance are taken back from its buffer, and
its release commits what is in files, so the next owner writes every row once. Members
may share DIR: each takes a free file prefix NAME.0, NAME.1, ... (a restarted member the
lowest free one). Each file says in its metadata how far each partition is filed, and a
member taking over a partition skips the rows the directory already holds: members sharing
DIR write every record once. With a directory per member, a
record is written twice only if its member dies between a file's rename and the server's
answer to the commit sent right after it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from ._util import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    describe,
    exit_code,
    positive_float,
    positive_int,
    quiet_library,
    say,
    verbosity,
)
from .listen import (
    FIRST_CONNECT_ATTEMPTS,
    _client_kwargs,
    _devices,
    _ends_listen,
    _ints,
    add_connection_arguments,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("files")
    out.add_argument("--dir", required=True, metavar="DIR", help="directory of the Parquet files")
    out.add_argument(
        "--roll-bytes",
        type=positive_int,
        default=128 << 20,
        metavar="N",
        help="start a new file after N bytes of rows (before compression; default 128 MiB)",
    )
    out.add_argument(
        "--roll-seconds",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="start a new file when the oldest buffered row is this old (default 300)",
    )
    out.add_argument(
        "--compression",
        default="zstd",
        choices=("zstd", "snappy", "gzip", "lz4", "brotli", "none"),
        help="Parquet compression (default zstd)",
    )
    stream = add_connection_arguments(parser)
    stream.add_argument(
        "--group",
        metavar="NAME",
        help="join this consumer group (see above); its server keeps the positions",
    )


class _Ingest:
    """Callbacks of one run. The sink is used under a lock: batches arrive on the client's
    thread, time-based rolls are polled from the main thread."""

    def __init__(self, sink: Any, quiet: bool, group: str | None = None) -> None:
        self.sink = sink
        self.lock = threading.Lock()
        self.quiet = quiet
        self.group = group
        self.ws: Any = None
        #: (group) per partition, the highest position handed to the sink, and the highest
        #: one in a committed (renamed, fsynced) file
        self.written: dict[int, int] = {}
        self.filed: dict[int, int] = {}
        #: (group) per assigned partition, the highest position already in the directory's
        #: files (a member that died before its commit was answered): rows up to it skipped
        self.skip: dict[int, int] = {}
        self._seen_files: dict[str, dict[int, int]] = {}  # file name -> its group_filed
        self.connected_once = False
        self.last_error: BaseException | None = None
        self.final: BaseException | None = None
        self.gave_up = ""
        self.wait = False
        self.ticks = 0

    def on_batch(self, batch: Any, ws: Any) -> None:
        try:
            with self.lock:
                if self.group is not None:
                    batch = self._note(batch, ws)  # before the write: a roll in it says so
                self.sink.write(batch)
                if self.group is not None:
                    self._commit_if_filed()
        except Exception as exc:
            # the batch is not in a file: stop before the position moves past it (the
            # files stay the checkpoint, so a restart resumes right here)
            self.final = exc
            ws.stop()
            raise
        self.ticks += len(batch)

    def _note(self, batch: Any, ws: Any) -> Any:
        """(group) Note each partition's last position in the batch, and drop the rows a
        dead member's files already hold (`skip`); returns the rows to write."""
        import numpy as np

        parts = np.array([ws.partition(d) for d in batch.devices], dtype=np.int64)[batch.codes]
        pos = batch.column("position")
        keep = None
        for p in np.unique(parts).tolist():
            mine = parts == p
            last = int(pos[mine][-1])  # a partition's positions increase in a batch
            if last > self.written.get(p, 0):
                self.written[p] = last
            floor = self.skip.get(p)
            if floor is not None:
                if keep is None:
                    keep = np.ones(len(batch), dtype=bool)
                keep &= ~(mine & (pos <= floor))
                if last > floor:
                    del self.skip[p]
        return batch if keep is None else batch.filter(keep)

    def file_metadata(self) -> dict[str, str]:
        """(group) Parquet metadata of each file: per partition, the highest position this
        member's files hold (every row of it up to there is in a file of the directory)."""
        filed = json.dumps({str(p): v for p, v in self.written.items()})
        log = getattr(self.ws, "log_id", None) or ""
        return {"iotcommute.group_filed": filed, "iotcommute.log": log}

    def _filed_in_directory(self, log: str | None) -> dict[int, int]:
        """(group) Per partition, the highest `group_filed` position of the group's files in
        the directory written from the same log (each file's metadata read once)."""
        import pyarrow.parquet as pq

        base = self.sink.prefix.rsplit(".", 1)[0] + "."
        best: dict[int, int] = {}
        for entry in os.scandir(self.sink.directory):
            name = entry.name
            if not (name.startswith(base) and name.endswith(".parquet")):
                continue
            filed = self._seen_files.get(name)
            if filed is None:
                try:
                    meta = pq.read_metadata(entry.path).metadata or {}
                    raw = json.loads(meta.get(b"iotcommute.group_filed", b"{}"))
                    filed = {int(k): int(v) for k, v in raw.items()}
                    if not log or meta.get(b"iotcommute.log", b"").decode() != log:
                        filed = {}  # another log's positions (or unknown): not these
                except Exception as exc:  # not ours, or unreadable: it cannot vouch
                    say("ingest", f"skipping {name} when reading positions: {describe(exc)}")
                    filed = {}
                self._seen_files[name] = filed
            for p, v in filed.items():
                if v > best.get(p, 0):
                    best[p] = v
        return best

    def _commit_if_filed(self) -> None:
        if self.group is not None and self.ws is not None and not self.sink.pending:
            if self.written and self.written != self.filed:
                self.filed = dict(self.written)
                self.ws.commit(self.filed)

    def poll(self) -> None:
        if self.final is None:
            with self.lock:
                self.sink.poll()
                self._commit_if_filed()

    def finish(self) -> None:
        """(group) Before a graceful stop: the buffered rows into a last file, and their
        positions into the last commit (sent and answered before the close)."""
        if self.final is None and self.group is not None:
            with self.lock:
                self.sink.commit()
                self._commit_if_filed()

    def on_assign(self, partitions: list[int], ws: Any) -> None:
        """A partition's rows already in the directory's files (its last owner died after a
        rename, before the commit was answered) are skipped, not written again."""
        with self.lock:
            filed = self._filed_in_directory(getattr(ws, "log_id", None))
            for p in partitions:
                if filed.get(p, 0) > 0:
                    self.skip[p] = filed[p]
        if not self.quiet:
            say("ingest", f"group {self.group}: assigned partitions {_ints(partitions)}")

    def on_revoke(self, partitions: list[int], ws: Any) -> None:
        """Rows of lost partitions not yet in a file go, and what is in files is committed
        with the release (the library sends it after this returns): their next owner
        starts right after the files."""
        gone = set(partitions)
        with self.lock:
            dropped = self.sink.discard(lambda device: ws.partition(device) in gone)
            last = {p: self.filed[p] for p in gone if p in self.filed}
            if last:
                ws.commit(last)
            for p in gone:
                self.written.pop(p, None)
                self.filed.pop(p, None)
                self.skip.pop(p, None)
        if not self.quiet:
            more = f" ({dropped} buffered ticks left to their next owner)" if dropped else ""
            say("ingest", f"group {self.group}: revoked partitions {_ints(partitions)}{more}")

    def on_connect(self, ws: Any) -> None:
        first = not self.connected_once
        self.connected_once = True
        self.last_error = None
        if not self.quiet:
            verb = "connected to" if first else "reconnected to"
            say("ingest", f"{verb} {ws.url}; resuming after position {ws.position}")

    def on_error(self, exc: BaseException, ws: Any) -> None:
        if getattr(exc, "fatal", False) or exc is self.final:
            return
        if ws.is_connected():
            if _ends_listen(exc):
                self.final = exc
                ws.stop()
            elif not self.quiet:
                say("ingest", describe(exc))
            return
        self.last_error = exc

    def on_reconnect(self, attempt: int, ws: Any) -> None:
        err, self.last_error = self.last_error, None
        if not self.connected_once and not self.wait and attempt >= FIRST_CONNECT_ATTEMPTS:
            self.final = err
            self.gave_up = (
                f" (gave up after {attempt} attempts, none succeeded; --wait keeps trying)"
            )
            ws.stop()
            return
        if not self.quiet:
            reason = describe(err) if err is not None else "connection lost"
            say("ingest", f"{reason}; retrying (attempt {attempt})")

    def on_gap(self, gap: dict[str, Any], ws: Any) -> None:
        if not self.quiet:
            say("ingest", f"gap: {gap.get('missed')} ticks after position {gap.get('from')} lost")


def _open_sink(args: argparse.Namespace, ParquetSink: Any, file_metadata: Any = None) -> Any:
    """The run's ParquetSink; a group member takes the first free prefix NAME.0, NAME.1,
    ... in DIR (each prefix is held by one sink at a time: an advisory lock)."""
    from ..exceptions import IotCommuteError

    kw: dict[str, Any] = {
        "roll_bytes": args.roll_bytes,
        "roll_seconds": args.roll_seconds,
        "compression": None if args.compression == "none" else args.compression,
    }
    if args.group is None:
        return ParquetSink(args.dir, **kw)
    base = args.group.replace("-", "_")
    for slot in range(1024):
        try:
            return ParquetSink(
                args.dir,
                prefix=f"{base}.{slot}",
                ordered=False,
                file_metadata=file_metadata,
                **kw,
            )
        except IotCommuteError:  # that prefix is another member's
            continue
    raise IotCommuteError(f"1024 members of group {args.group} already write into {args.dir}")


def run(args: argparse.Namespace) -> int:
    from ..client import WebSocket
    from ..exceptions import NetworkError

    quiet_library(args)
    kw = _client_kwargs(args)
    devices = _devices(args.devices)
    if args.group is not None and args.devices.strip() != "*":
        raise UsageError(
            "--group and --devices do not go together: the group's server assigns its "
            "members' devices"
        )
    try:
        from ..sink.ingest import resume_from
        from ..sink.parquet import ParquetSink
    except ImportError as exc:  # pyarrow missing
        raise UsageError(f"ingest needs pyarrow: pip install 'iotcommute[arrow]' ({exc})") from None
    ing = _Ingest(None, verbosity(args) < 0, args.group)
    ing.wait = bool(args.wait)
    try:
        sink = ing.sink = _open_sink(args, ParquetSink, ing.file_metadata)
    except OSError as exc:
        say("ingest", f"cannot use {args.dir}: {exc.strerror or exc}")
        return EXIT_ERROR
    except Exception as exc:
        say("ingest", describe(exc))
        return exit_code(exc)
    try:
        if args.group is None:
            ws = WebSocket(
                **kw,
                format="binary",
                subscribe=None,
                open_timeout=args.open_timeout,
                max_retries=args.max_retries,
            )
        else:
            ws = WebSocket(
                **kw,
                format="binary",
                group=args.group,
                group_commit="manual",
                open_timeout=args.open_timeout,
                max_retries=args.max_retries,
            )
    except ValueError as exc:
        sink.close()
        raise UsageError(str(exc)) from None
    ing.ws = ws
    ws.on_batch = ing.on_batch
    ws.on_connect = ing.on_connect
    ws.on_error = ing.on_error
    ws.on_reconnect = ing.on_reconnect
    ws.on_gap = ing.on_gap
    if args.group is None:
        ws.subscribe(devices, from_position=resume_from(sink))  # the files' end: resume point
    else:
        ws.on_assign = ing.on_assign
        ws.on_revoke = ing.on_revoke
    ws.connect(threaded=True)
    interrupted = False
    stop = threading.Event()
    old = None
    try:
        old = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    except ValueError:  # not the main thread
        pass
    try:
        while not ws.join(0.2):
            if stop.is_set():
                stop.clear()
                ing.finish()
                ws.stop()
            else:
                ing.poll()
    except KeyboardInterrupt:
        interrupted = True
        ing.finish()
        ws.stop()
        ws.join(10)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    err = ing.final or ws.error
    try:
        with ing.lock:
            if ing.final is None:
                if args.group is not None:
                    # what came after the last commit is the next owner's: not into a file
                    sink.discard(lambda device: True)
                sink.close()  # the rows buffered so far become the last file
    except Exception as exc:
        err = err or exc
    if interrupted:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    if err is None and ing.gave_up:
        err = NetworkError("could not connect")
    if err is None:
        return EXIT_OK
    say("ingest", describe(err) + ing.gave_up)
    return exit_code(err)
