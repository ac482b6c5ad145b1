"""``swapd top``: frames rendered against a running daemon with two clients."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console

from swapd.cmd.top import frame, render
from tests.test_daemon_helpers import ROOT, client_cmd, daemon_running, needs_uffd, stats_all

pytestmark = needs_uffd

CLIENT = """
    c = connect(SOCK, name="top-" + sys.argv[2])
    n = int(sys.argv[2])
    reg = c.map(n * 4096)
    for i in range(n):
        reg[i * 4096:i * 4096 + 8] = b"PAGE%04d" % i
    reg.advise(0, n // 2 * 4096, "cold")
    out(ready=1)
    for line in sys.stdin:
        for i in range(n):
            assert bytes(reg[i * 4096:i * 4096 + 8]) == b"PAGE%04d" % i
        reg.advise(0, n // 2 * 4096, "cold")
        out(done=1)
"""


@contextmanager
def client(sock: Path, pages: int) -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([*client_cmd(CLIENT, sock), str(pages)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert p.stdout is not None
        assert '"ready"' in p.stdout.readline()
        yield p
    finally:
        p.kill()
        p.communicate(timeout=10)


def test_frames_against_a_running_daemon(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d, ExitStack() as stack:
        small = stack.enter_context(client(d.socket, 64))
        big = stack.enter_context(client(d.socket, 200))
        prev = stats_all(d.socket)
        t0 = time.monotonic()
        assert big.stdin is not None and big.stdout is not None
        big.stdin.write("go\n")
        big.stdin.flush()
        assert '"done"' in big.stdout.readline()
        cur = stats_all(d.socket)
        f = frame(prev, cur, time.monotonic() - t0, sort="faults")
        assert [r.name for r in f.rows] == ["top-200", "top-64"]  # big faulted, small did not
        assert f.rows[0].faults_s > 0 and f.rows[1].faults_s == 0
        assert f.rows[0].compressed > 0 and f.rows[0].resident <= f.rows[0].limit
        assert f.clients == 2 and f.backend == "zsmalloc" and f.density > 1
        by_id = frame(prev, cur, 1.0, sort="id")
        assert [r.pid for r in by_id.rows] == [small.pid, big.pid]
        console = Console(record=True, width=160)
        console.print(render(f, "faults"))
        text = console.export_text()
        assert "top-200" in text and "top-64" in text and "FAULTS/S" in text
        assert "sorted by faults" in text and "density" in text
        assert "0:compressed" in text and "1:disk" in text  # each tier of the chain
        # the command, one frame for scripts
        r = subprocess.run([sys.executable, "-m", "swapd", "top", "--socket", str(d.socket),
                            "--once", "--interval", "0.2", "--sort", "resident", "--json"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert [row["name"] for row in out["rows"]] == ["top-200", "top-64"]
        assert out["clients"] == 2  # swapd top's own connection is not a client
        r = subprocess.run([sys.executable, "-m", "swapd", "top", "--socket", str(d.socket),
                            "--once", "--interval", "0.1"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
        assert r.returncode == 0 and "top-64" in r.stdout and "RES/LIMIT" in r.stdout


def test_live_view_sorts_by_key_and_quits(tmp_path: Path) -> None:
    """On a terminal (a pty), ``r`` re-sorts by resident memory and ``q`` quits."""
    import os
    import select

    with daemon_running(tmp_path) as d, client(d.socket, 64):
        master, slave = os.openpty()
        p = subprocess.Popen([sys.executable, "-m", "swapd", "top", "--socket", str(d.socket),
                              "--interval", "0.2"], stdin=slave, stdout=slave, stderr=slave,
                             cwd=ROOT, env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
        os.close(slave)
        seen = b""

        def read_until(marker: bytes, timeout: float = 30.0) -> None:
            nonlocal seen
            deadline = time.monotonic() + timeout
            while marker not in seen and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:
                        break
            assert marker in seen, seen[-2000:]

        try:
            read_until(b"sorted by faults")
            os.write(master, b"r")
            read_until(b"sorted by resident")
            os.write(master, b"q")
            assert p.wait(30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            os.close(master)
