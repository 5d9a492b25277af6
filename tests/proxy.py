"""A real HTTP proxy on loopback for the tests (REST and WebSocket clients): CONNECT tunnels
(https:// roots, ws:// and wss:// streams) and absolute-form forwarding (http:// roots), with
optional Basic credentials.

    with Proxy(auth=("puser", "ppass")) as proxy:
        Commute(..., proxy=proxy.url_with("puser", "ppass"))
        proxy.seen        # [(request line, Proxy-Authorization or None), ...]

Forwarded requests are sent upstream with `Connection: close`, one per client connection, so
the proxy never has to parse a response: it copies bytes both ways until both sides end.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["Proxy"]

_HOP_BY_HOP = ("proxy-authorization", "proxy-connection", "connection", "keep-alive")


class Proxy:
    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.expected = None
        if auth is not None:
            self.expected = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        self.seen: list[tuple[str, str | None]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        self._sock.close()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(5)

    # ------------------------------------------------------------------ internals

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(s)
        return s

    def _serve(self, conn: socket.socket) -> None:
        self._track(conn)
        conn.settimeout(10)
        up: socket.socket | None = None
        try:
            head, rest = self._read_head(conn)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = [(k, v) for k, _, v in (x.partition(":") for x in lines[1:]) if v]
            given = next((v.strip() for k, v in headers if k.lower() == _HOP_BY_HOP[0]), None)
            self.seen.append((lines[0], given))
            if self.expected is not None and given != self.expected:
                conn.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\n'
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up = self._track(socket.create_connection((host.strip("[]"), int(port)), 5))
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target)
                assert url.hostname and url.port, target
                up = self._track(socket.create_connection((url.hostname, url.port), 5))
                origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
                kept = [f"{k}:{v}" for k, v in headers if k.strip().lower() not in _HOP_BY_HOP]
                out = [f"{method} {origin} {version}", *kept, "Connection: close", "", ""]
                up.sendall("\r\n".join(out).encode("latin-1"))
            if rest:
                up.sendall(rest)
            self._spawn(self._copy, conn, up)
            self._copy(up, conn)
        except OSError:
            pass
        finally:
            for s in (conn, up):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    @staticmethod
    def _read_head(conn: socket.socket) -> tuple[bytes | None, bytes]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk or len(buf) > 65536:
                return None, b""
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        return head, rest

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
