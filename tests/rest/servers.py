"""Tiny local HTTP servers for the REST client's tests: what the reference server cannot play
(canned answers of any status and body, TLS with a test CA, sockets that never answer)."""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ENVELOPE", "Blackhole", "Canned", "serve"]

ENVELOPE = json.dumps({"status": "success", "data": [{"id": "d1"}]}).encode()


class Canned(ThreadingHTTPServer):
    """Answers every request with (status, headers, body) and records what it saw.

    `script`: answers given first, one per request, before `answer`. `keepalive`: speak
    HTTP/1.1 and keep connections open (else HTTP/1.0, one request per connection).
    `ports`: the client port of each request (one port = one reused connection).
    """

    daemon_threads = True

    def __init__(
        self,
        status: int = 200,
        ctype: str = "application/json",
        body: bytes = ENVELOPE,
        keepalive: bool = False,
    ):
        self.answer = (status, ctype, body)
        self.script: list[tuple[int, str, bytes]] = []
        self.keepalive = keepalive
        self.extra_headers: list[tuple[str, str]] = []
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.ports: list[int] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def root(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Canned

    def setup(self) -> None:
        super().setup()
        self.protocol_version = "HTTP/1.1" if self.server.keepalive else "HTTP/1.0"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
        self.server.ports.append(self.client_address[1])
        script = self.server.script
        status, ctype, body = script.pop(0) if script else self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "rid-1")
        for k, v in self.server.extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


def serve(srv: Canned) -> Iterator[Canned]:
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


class Blackhole:
    """Accepts connections and never answers; counts them exactly once stopped."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            select.select([self.sock], [], [], 0.05)
            while True:
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    break
                self.conns.append(conn)
            if stopping:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()
        return len(self.conns)
