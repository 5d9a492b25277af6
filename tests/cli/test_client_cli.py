"""`iotcommute listen`, `login` and the top-level options, run as a user runs them.

Every test is a subprocess against a real reference server on loopback, and checks the
exact line a user sees and the documented exit code (iotcommute/cli/_util.py). No test
waits for a timer to expire; retries use the client's short initial backoff.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotcommute.server import ServerThread
from iotcommute.server.registry import README_DEVICE_ID, README_DEVICE_KEY, sim_device_id

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-m", "iotcommute"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    srv = ServerThread("127.0.0.1", 0).start()
    yield srv
    srv.stop()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTCOMMUTE_")}
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 40
) -> tuple[int, str, str]:
    proc = subprocess.run(
        [*CLI, *args],
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_clean_line(stderr: str) -> str:
    """Exactly one line, prefixed by the command, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("iotcommute "), stderr
    return lines[0]


def _token(server: ServerThread) -> str:
    rc, out, err = cli("login", "--demo", "--url", server.http_url)
    assert rc == 0, err
    return out.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ top level


def test_version_and_help_state_exit_codes_and_defaults() -> None:
    rc, out, _ = cli("--version")
    assert rc == 0 and out.startswith("iotcommute 0.") and "Python" in out
    rc, out, _ = cli("--help")
    assert rc == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130"):
        assert f"\n  {code}" in out, out
    rc, out, _ = cli("serve", "--help")
    assert rc == 0
    assert "(default: 0)" in out and "(default: 1.0)" in out  # --simulate, --rate
    assert "exit codes:" in out
    rc, out, _ = cli("listen", "--help")
    text = " ".join(out.split())
    assert "--format {json,binary} wire format" in text and "(default: binary)" in text
    for option in ("--token", "--max-retries", "--devices", "--checkpoint", "--from", "--wait"):
        assert option in out


def test_help_fits_80_columns() -> None:
    env = _env(COLUMNS="80")
    for command in ([], ["serve"], ["listen"], ["login"], ["demo"]):
        rc, out, _ = cli(*command, "--help", env=env)
        assert rc == 0
        wide = [line for line in out.splitlines() if len(line) > 80]
        assert not wide, (command, wide)


def test_every_option_has_help() -> None:
    from iotcommute.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(subparsers.choices, dict)
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"iotcommute {name} {action.option_strings} has no help"


def test_usage_error_exit_2_without_traceback() -> None:
    rc, _, err = cli("listen", "--bogus")
    assert rc == 2 and "Traceback" not in err and "unrecognized arguments: --bogus" in err


def test_verbosity_before_or_after_the_subcommand(server: ServerThread) -> None:
    env = _env(IOTCOMMUTE_KEY=README_DEVICE_KEY, IOTCOMMUTE_DEVICE=README_DEVICE_ID)
    server.call(lambda: [server.hub.log.append(sim_device_id(1), {"i": i}) for i in range(2)])
    for args in (["-v", "listen"], ["listen", "-v"]):
        rc, _, err = cli(*args, "--url", server.url, "--from", "0", "--count", "1", env=env)
        assert rc == 0, err
        assert "INFO iotcommute" in err  # the library's records show from -v
    rc, _, err = cli("listen", "-q", "--url", server.url, "--from", "0", "--count", "1", env=env)
    assert rc == 0 and err == ""


# ------------------------------------------------------------------ listen


def test_listen_prints_json_lines(server: ServerThread) -> None:
    positions = server.call(
        lambda: [server.hub.log.append(sim_device_id(1), {"i": i}) for i in range(20)]
    )
    env = _env(
        IOTCOMMUTE_URL=server.url,
        IOTCOMMUTE_KEY=README_DEVICE_KEY,
        IOTCOMMUTE_DEVICE=README_DEVICE_ID,
    )
    rc, out, err = cli(
        "listen",
        "--devices",
        sim_device_id(1),
        "--from",
        str(positions[0] - 1),
        "--count",
        "20",
        env=env,
    )
    assert rc == 0, err
    ticks = [json.loads(x) for x in out.splitlines()]
    assert [t["position"] for t in ticks] == positions
    assert all(t["type"] == "tick" and t["device"] == sim_device_id(1) for t in ticks)
    assert README_DEVICE_KEY not in err
    assert err.splitlines() == [
        f"iotcommute listen: connected to {server.url} as client; following {sim_device_id(1)}"
    ]


def test_listen_with_token_from_login(server: ServerThread, tmp_path: Path) -> None:
    token = _token(server)
    api_key, _, access = token.partition(":")
    assert api_key == "demo-app" and len(access) > 10
    pos = server.call(lambda: server.hub.log.append(sim_device_id(2), {"x": 1}))
    # option, environment and file give the same result; the token is never echoed
    file = tmp_path / "token"
    rc, _, err = cli("login", "--demo", "--url", server.url, "--save", str(file))
    assert rc == 0 and file.stat().st_mode & 0o777 == 0o600
    assert access not in err
    for args, env in (
        (["--token", token], _env()),
        ([], _env(IOTCOMMUTE_TOKEN=token)),
        (["--token", f"@{file}"], _env()),
    ):
        rc, out, err = cli(
            "listen", "--url", server.url, *args, "--from", str(pos - 1), "--count", "1", env=env
        )
        assert rc == 0, err
        assert json.loads(out)["position"] == pos
        assert access not in err


def test_listen_bad_key_exit_3_one_line(server: ServerThread) -> None:
    rc, _, err = cli(
        "listen",
        "--url",
        server.url,
        "--key",
        "WRONG0000000000000000",
        "--device",
        README_DEVICE_ID,
        "--role",
        "device",
    )
    assert rc == 3
    line = assert_one_clean_line(err)
    assert line == (
        "iotcommute listen: TokenError (HTTP 401): server rejected the WebSocket upgrade: "
        "invalid device id or key"
    ), line
    assert "WRONG0000" not in err


def test_listen_bad_token_and_forbidden_role_exit_3(server: ServerThread) -> None:
    rc, _, err = cli("listen", "--url", server.url, "--token", "demo-app:not-a-token")
    assert rc == 3 and "TokenError (HTTP 401)" in assert_one_clean_line(err)
    assert "not-a-token" not in err
    rc, _, err = cli(
        "listen",
        "--url",
        server.url,
        "--key",
        "SENSORONLY0000000001",
        "--device",
        "sensor-only-1",
        "--role",
        "client",
    )
    assert rc == 3 and "PermissionDenied (HTTP 403)" in assert_one_clean_line(err)


def test_listen_unknown_device_exits_instead_of_sitting_connected(server: ServerThread) -> None:
    token = _token(server)
    rc, _, err = cli("listen", "--url", server.url, "--token", token, "--devices", "sim-9999")
    assert rc == 4, err
    assert err.splitlines()[-1] == (
        "iotcommute listen: NotFoundError: unknown device in subscription"
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8765", "the URL must start with ws:// or wss:// (the stream of "),
        ("ftp://x", "the URL must start with ws:// or wss://"),
    ],
)
def test_listen_bad_url_scheme_exit_2(url: str, expected: str) -> None:
    rc, _, err = cli("listen", "--url", url, "--token", "a:b")
    assert rc == 2
    assert assert_one_clean_line(err).startswith("iotcommute listen: " + expected)


def test_listen_missing_credentials_exit_2() -> None:
    rc, _, err = cli("listen")
    assert rc == 2 and "give --token" in assert_one_clean_line(err)
    rc, _, err = cli("listen", "--token", "no-colon-here")
    assert rc == 2 and "API_KEY:ACCESS_TOKEN" in assert_one_clean_line(err)
    assert "no-colon-here" not in err


def test_listen_refused_gives_up_with_one_line_per_retry() -> None:
    port = _free_port()
    rc, out, err = cli("listen", "--url", f"ws://127.0.0.1:{port}", "--token", "a:b")
    assert rc == 1 and out == ""
    assert "Traceback" not in err
    reason = f"iotcommute listen: NetworkError: cannot connect to 127.0.0.1:{port}: "
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert all(line.startswith(reason) for line in lines), err
    assert lines[0].endswith("; retrying (attempt 1)") and lines[1].endswith("(attempt 2)")
    assert lines[2].endswith("(gave up after 3 attempts, none succeeded; --wait keeps trying)")


def test_listen_404_is_one_short_line_per_attempt(server: ServerThread) -> None:
    rc, _, err = cli("listen", "--url", server.url + "/nope", "--token", "a:b", "-q")
    assert rc == 1
    line = assert_one_clean_line(err)  # -q: no retry lines
    assert line.startswith(
        "iotcommute listen: InvalidStatus (HTTP 404): server rejected the WebSocket upgrade: "
        "no WebSocket endpoint here"
    )
    assert "{" not in line and "<" not in line  # never the body


def test_listen_ctrl_c_exits_130_without_traceback(server: ServerThread) -> None:
    env = _env(IOTCOMMUTE_KEY=README_DEVICE_KEY, IOTCOMMUTE_DEVICE=README_DEVICE_ID)
    proc = subprocess.Popen(
        [*CLI, "listen", "--url", server.url, "--from", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert "connected to" in proc.stderr.readline()  # connected: now interrupt
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert err == "\n"  # the line after the echoed ^C ends; nothing else


def test_listen_sigterm_stops_cleanly(server: ServerThread) -> None:
    env = _env(IOTCOMMUTE_KEY=README_DEVICE_KEY, IOTCOMMUTE_DEVICE=README_DEVICE_ID)
    proc = subprocess.Popen(
        [*CLI, "listen", "--url", server.url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert "connected to" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and err == ""


# ------------------------------------------------------------------ login


def test_login_wrong_password_exit_3(server: ServerThread) -> None:
    rc, out, err = cli(
        "login", "--url", server.http_url, "--demo", "--password-stdin", input="wrong\n"
    )
    assert rc == 3 and out == ""
    assert assert_one_clean_line(err) == (
        "iotcommute login: TokenError (HTTP 401): wrong user id or password"
    )
    assert "wrong" not in err.replace("wrong user id", "")


def test_login_without_terminal_says_what_is_missing(server: ServerThread) -> None:
    rc, _, err = cli("login", "--url", server.http_url, input="")
    assert rc == 2 and "IOTCOMMUTE_API_KEY" in assert_one_clean_line(err)


def test_login_refused_exit_1() -> None:
    rc, _, err = cli("login", "--demo", "--url", f"http://127.0.0.1:{_free_port()}")
    assert rc == 1 and "NetworkError: cannot reach" in assert_one_clean_line(err)


def test_login_token_opens_rest_and_stream(server: ServerThread) -> None:
    from iotcommute import Commute

    api_key, _, access = _token(server).partition(":")
    with Commute(api_key, root=server.http_url, access_token=access) as api:
        assert any(d["id"] == README_DEVICE_ID for d in api.devices())


def test_serve_port_in_use_exit_1_one_line(server: ServerThread) -> None:
    rc, out, err = cli("serve", "--port", str(server.port), timeout=30)  # a hang fails at 30 s
    assert rc == 1 and out == ""
    assert assert_one_clean_line(err) == (
        f"iotcommute serve: cannot listen on 127.0.0.1:{server.port}: the port is in use "
        "(another server running? --port 0 picks a free port)"
    )


def test_listen_lost_server_retries_then_gives_up_with_max_retries() -> None:
    srv = ServerThread("127.0.0.1", 0).start()
    env = _env(IOTCOMMUTE_KEY=README_DEVICE_KEY, IOTCOMMUTE_DEVICE=README_DEVICE_ID)
    proc = subprocess.Popen(
        [*CLI, "listen", "--url", srv.url, "--max-retries", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "connected to" in proc.stderr.readline()
    finally:
        srv.stop()  # closes with 1001, then refuses
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.splitlines()
    assert lines[0].startswith("iotcommute listen: ConnectionClosedOK: connection closed: 1001")
    assert lines[0].endswith("; retrying (attempt 1 of 2)")
    assert lines[1].endswith("; retrying (attempt 2 of 2)")
    assert lines[2].endswith("Connection refused (gave up after 2 retries)")
    assert len(lines) == 3 and "Traceback" not in err


def test_listen_html_404_never_dumps_the_page() -> None:
    """Any web server's 404 page: the line says the status, not the HTML."""
    import http.server
    import threading

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        rc, _, err = cli("listen", "--url", f"ws://127.0.0.1:{port}/", "--token", "a:b", "-q")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert rc == 1
    line = assert_one_clean_line(err)
    assert line.startswith(  # the page's title is its reason
        "iotcommute listen: InvalidStatus (HTTP 501): server rejected the WebSocket upgrade: "
        "Error response ("
    ), line
    assert "<" not in line and "html" not in line.lower()


def test_listen_wait_outlasts_the_librarys_first_connect_retries() -> None:
    """--wait keeps trying a server that is not up yet, past the library's default of 3
    first-connect retries (it used to give up after them: a regression found by the
    crash test, tests/e2e/test_crash_library.py)."""
    port = _free_port()
    env = _env(IOTCOMMUTE_KEY=README_DEVICE_KEY, IOTCOMMUTE_DEVICE=README_DEVICE_ID)
    cmd = [*CLI, "listen", "--url", f"ws://127.0.0.1:{port}", "--wait", "--from", "0"]
    proc = subprocess.Popen(
        [*cmd, "--count", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None and proc.stdout is not None
    try:
        seen = b""
        while b"(attempt 5)" not in seen:  # past the library's 3 first-connect retries
            line = proc.stderr.readline()
            assert line, f"listen ended: {seen.decode()}"
            seen += line
        srv = ServerThread("127.0.0.1", port, simulate=1, rate=50.0).start()
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            srv.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[0])["type"] == "tick"


def test_listen_from_with_checkpoint_resumes_after_a_restart(tmp_path: Path) -> None:
    """`listen --from 0 --checkpoint F` run again resumes after the checkpoint (it used to
    subscribe to nothing once F held a position: found by tests/e2e/test_crash_library.py)."""
    env = _env(IOTCOMMUTE_KEY=README_DEVICE_KEY, IOTCOMMUTE_DEVICE=README_DEVICE_ID)
    ckpt = tmp_path / "pos.txt"
    srv = ServerThread("127.0.0.1", 0, simulate=1, rate=100.0).start()
    firsts, saved = [], []
    try:
        cmd = [*CLI, "listen", "--url", srv.url, "--from", "0", "--checkpoint", str(ckpt)]
        for _ in range(2):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until a tick (the old bug: for ever)
            proc.send_signal(signal.SIGTERM)  # a clean stop saves the checkpoint
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            firsts.append(json.loads(line)["position"])
            saved.append(int(ckpt.read_text().split()[0]))  # "position log-id"
    finally:
        srv.stop()
    assert firsts[0] == 1
    assert firsts[1] == saved[0] + 1  # on from the checkpoint, neither back to 0 nor a skip


def test_listen_count_checkpoints_the_last_tick_printed(tmp_path: Path) -> None:
    """`--count N --checkpoint F` checkpoints the N-th tick, not the end of the read it came
    in (a binary batch holds many ticks: the rest were skipped by the next run)."""
    env = _env(IOTCOMMUTE_KEY=README_DEVICE_KEY, IOTCOMMUTE_DEVICE=README_DEVICE_ID)
    ckpt = tmp_path / "pos.txt"
    srv = ServerThread("127.0.0.1", 0, simulate=3, rate=100.0).start()
    try:
        time.sleep(0.5)  # a backlog, so that the replay from 0 comes in big batches
        args = ("--url", srv.url, "--from", "0", "--checkpoint", str(ckpt), "--count", "3")
        rc1, out1, err1 = cli("listen", *args, env=env)
        rc2, out2, err2 = cli("listen", *args, env=env)
    finally:
        srv.stop()
    assert rc1 == 0 and rc2 == 0, err1 + err2
    positions = [json.loads(line)["position"] for line in (out1 + out2).splitlines()]
    assert positions == [1, 2, 3, 4, 5, 6]
    assert int(ckpt.read_text().split()[0]) == 6
