"""Every example a user can copy runs as printed, against the reference server.

What runs: every script in examples/, and every fenced ```python and ```bash block of
README.md and docs/*.md, each in its own subprocess with IOTCOMMUTE_URL/IOTCOMMUTE_API_URL
pointing at a reference server with 5 simulated devices (what `iotcommute serve --simulate 5
--rate 10` gives a reader) and IOTCOMMUTE_TOKEN holding a demo user's access token.

Marking, on the line right before the opening fence (an HTML comment, invisible on GitHub):

- ``<!-- fragment -->``: not run -- a shape, an API listing, a line that installs
  something or starts a server that never ends.
- ``<!-- runs-until-stopped -->``: runs until interrupted, like the README's first example;
  it passes once it has printed 3 lines without an error, and is then killed.

Any other python/bash block must exit 0 by itself within the timeout. Blocks in other
languages (json, http, plain transcripts) are never run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotcommute.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT = 30.0
STREAM_LINES = 3

# The getting-started example was promised to users; it must stay exactly this.
README_FIRST_EXAMPLE = """\
from iotcommute import WebSocket
iws = WebSocket("L1SEIUDU1MC996W48L8Q", "FY6ODPIVU522SY1", "device")
def on_tick(tick, ws): print(tick)
def on_connect(ws): print("connection is established")
iws.on_tick = on_tick
iws.on_connect = on_connect
iws.connect()          # blocks; connect(threaded=True) runs it in the background
"""

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Block:
    file: Path
    line: int
    lang: str
    marker: str  # "", "fragment" or "runs-until-stopped"
    code: str

    @property
    def id(self) -> str:
        return f"{self.file.name}:{self.line}"


_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(fragment|runs-until-stopped)\s*-->\s*$")


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the marker of the line before each."""
    lines = path.read_text("utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        prev = lines[start - 1] if start > 0 else ""
        mm = _MARKER.match(prev)
        blocks.append(
            Block(path, start + 1, m.group(1), mm.group(1) if mm else "", "\n".join(body) + "\n")
        )
        i += 1
    return blocks


RUNNABLE = [
    b for path in DOCS for b in code_blocks(path) if b.lang in ("python", "bash", "sh", "shell")
]


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    from iotcommute.cli.login import form_login
    from iotcommute.rest import Commute

    srv = ServerThread("127.0.0.1", 0, simulate=5, rate=10).start()
    try:
        rt = form_login(srv.http_url, "demo-app", "demo-user", "demo-pass")
        with Commute("demo-app", root=srv.http_url) as api:
            token = api.generate_session(rt, api_secret="demo-secret")["access_token"]
        e = {k: v for k, v in os.environ.items() if not k.startswith("IOTCOMMUTE_")}
        bindir = str(Path(sys.executable).parent)  # the `iotcommute` script of this venv
        e.update(
            IOTCOMMUTE_URL=srv.url,
            IOTCOMMUTE_API_URL=srv.http_url,
            IOTCOMMUTE_TOKEN=f"demo-app:{token}",
            PATH=bindir + os.pathsep + e.get("PATH", ""),
            PYTHONUNBUFFERED="1",
        )
        # the simulated devices have produced ticks before the first example connects
        deadline = time.monotonic() + 10
        while srv.call(lambda: srv.hub.log.last_position) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield e
    finally:
        srv.stop()


def _command(block_lang: str, source: Path) -> list[str]:
    if block_lang == "python":
        return [sys.executable, str(source)]
    return ["bash", "-euo", "pipefail", str(source)]


def _run_to_end(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr


def _run_until_lines(cmd: list[str], env: dict[str, str], cwd: Path, n: int) -> list[str]:
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(lines) < n and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert len(lines) >= n, f"printed {lines!r} before it stopped\n{err}"
    assert "Traceback" not in err, err
    return lines


def test_readme_first_example_is_verbatim() -> None:
    first = next(b for b in RUNNABLE if b.file.name == "README.md" and b.lang == "python")
    assert first.code == README_FIRST_EXAMPLE
    assert first.marker == "runs-until-stopped"


def test_every_block_is_run_or_marked() -> None:
    """The marker vocabulary is closed: a typo would silently skip a block."""
    for path in DOCS:
        text = path.read_text("utf-8")
        for comment in re.findall(r"<!--\s*([\w-]+)\s*-->", text):
            assert comment in ("fragment", "runs-until-stopped") or comment.startswith(
                "performance"
            ), f"{path.name}: unknown marker <!-- {comment} -->"


@pytest.mark.parametrize(
    "block", [b for b in RUNNABLE if b.marker != "fragment"], ids=lambda b: b.id
)
def test_doc_block_runs(block: Block, env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / ("block.py" if block.lang == "python" else "block.sh")
    source.write_text(block.code, "utf-8")
    cmd = _command(block.lang, source)
    if block.marker == "runs-until-stopped":
        lines = _run_until_lines(cmd, env, tmp_path, STREAM_LINES)
        if block.code == README_FIRST_EXAMPLE:
            assert lines[0] == "connection is established\n"
            assert all("'type': 'tick'" in line for line in lines[1:]), lines
    else:
        _run_to_end(cmd, env, tmp_path)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, env: dict[str, str], tmp_path: Path) -> None:
    assert script.read_text("utf-8").startswith('"""'), "each example says what it shows"
    _run_to_end([sys.executable, str(script)], env, tmp_path)


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "device_publisher.py",
        "fleet_listener.py",
        "command_round_trip.py",
        "asyncio_consumer.py",
        "rest_session.py",
    }
