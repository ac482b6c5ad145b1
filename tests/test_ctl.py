"""Operating a running daemon: ``swapd ctl`` knobs, SIGHUP reload, ``swapd stats`` and the
daemon's own log lines -- all against real daemons (swapd serve subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from swapd.client import connect
from swapd.errors import RequestError
from tests.test_daemon_helpers import (
    BASE_CONFIG,
    ROOT,
    DaemonProc,
    client_cmd,
    daemon_running,
    needs_uffd,
    stats_all,
    wait_for,
)

pytestmark = needs_uffd

CLIENT = """
    c = connect(SOCK, name="ctl-client")
    reg = c.map(256 * 4096)
    for i in range(256):
        reg[i * 4096:i * 4096 + 8] = b"PAGE%04d" % i
    out(ready=1, session=c.stats()["session"])
    for line in sys.stdin:
        bad = [i for i in range(256) if bytes(reg[i * 4096:i * 4096 + 8]) != b"PAGE%04d" % i]
        reg.advise(0, 128 * 4096, "cold")
        out(bad=bad, stats=c.stats())
"""


@contextmanager
def client(d: DaemonProc) -> Iterator[tuple[subprocess.Popen[str], int]]:
    p = subprocess.Popen(client_cmd(CLIENT, d.socket), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        yield p, int(first["session"])
    finally:
        p.kill()
        p.communicate(timeout=10)


def touch_all(p: subprocess.Popen[str]) -> dict[str, Any]:
    """Ask the client to read every page (checking them) and evict half; its reply."""
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    r: dict[str, Any] = json.loads(p.stdout.readline())
    assert r["bad"] == [], r["bad"]
    return r


def ctl(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swapd", "ctl", "--socket", str(d.socket),
                           *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_global_knobs_answer_the_value_in_effect(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d, client(d) as (p, sid):
        touch_all(p)
        r = ctl(d, "set", "reclaim.policy", "sieve")
        assert r.returncode == 0 and r.stdout == "reclaim.policy = sieve\n", r.stderr
        touch_all(p)  # the client's resident pages moved to the new policy: still correct
        assert stats_all(d.socket)["daemon"]["info"]["reclaim_policy"] == "sieve"
        assert ctl(d, "set", "layer.pool_limit_bytes", "256K").stdout == \
            "layer.pool_limit_bytes = 262144\n"
        assert ctl(d, "set", "layer.accept_threshold_percent", "50").stdout == \
            "layer.accept_threshold_percent = 50.0\n"
        assert ctl(d, "set", "shrinker", "off").stdout == "shrinker = off\n"
        assert ctl(d, "set", "layer.demotion_policy", "sieve").stdout == \
            "layer.demotion_policy = sieve\n"
        assert ctl(d, "set", "pager.readahead_max", "8").stdout == "pager.readahead_max = 8\n"
        r = touch_all(p)
        assert r["stats"]["layer"]["zswpout"] > 0
        assert ctl(d, "set", "limits.global_resident_bytes", "512K").stdout == \
            "limits.global_resident_bytes = 524288\n"
        with connect(d.socket) as c:
            assert c.ctl("resident_bytes", client=sid) == 512 * 1024  # capped
            everything = c.ctl()
        assert everything["knobs"]["reclaim.policy"] == "sieve"
        assert everything["knobs"]["shrinker"] is False
        assert everything["clients"][str(sid)]["resident_bytes"] == 512 * 1024
        touch_all(p)
        # refusals: one line naming the problem, exit 2, nothing changed
        for args, message in [
            (("set", "reclaim.policy", "clok"), "no swapd.policies plugin named 'clok'"),
            (("set", "layer.backend", "zbud"), "[layer] backend cannot change in a running"),
            (("set", "layer.pool_limit_bytes", "lots"), "cannot parse size 'lots'"),
            (("set", "pager.readahead_min", "16"), "readahead_min (16) exceeds"),
            (("set", "bogus", "1"), "unknown knob 'bogus'"),
            (("client", "999", "resident_bytes", "1M"), "no client 999"),
            (("client", str(sid), "colour", "1"), "unknown client knob 'colour'"),
        ]:
            r = ctl(d, *args)
            assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert ctl(d, "get", "reclaim.policy").stdout == "reclaim.policy = sieve\n"


def test_client_knobs_and_recording(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d, client(d) as (p, sid):
        assert ctl(d, "client", str(sid), "resident_bytes", "2M").stdout == \
            "resident_bytes = 2097152\n"
        r = ctl(d, "client", str(sid), "record", "on")
        assert r.returncode == 0, r.stderr
        path = Path(r.stdout.split(" = ", 1)[1].strip())
        assert path.parent == d.state
        touch_all(p)  # evicts half
        touch_all(p)  # faults them back
        assert ctl(d, "client", str(sid), "record", "off").stdout == "record = -\n"
        rows = path.read_text().splitlines()
        assert rows[0] == "time,page,op,size"
        assert {row.split(",")[2] for row in rows[1:]} >= {"r", "e"}, rows[:5]
        path.unlink()
        r = ctl(d, "client", str(sid), "record", "../escape.csv")
        assert r.returncode == 2 and "a file name in the state directory" in r.stderr
        # memory.zswap.max / memory.zswap.writeback equivalents
        assert ctl(d, "client", str(sid), "zswap_max_bytes", "64K").stdout == \
            "zswap_max_bytes = 65536\n"
        assert ctl(d, "client", str(sid), "writeback", "off").stdout == "writeback = off\n"
        before = touch_all(p)["stats"]["layer"]
        after = touch_all(p)["stats"]
        assert after["layer"]["compr_data_size"] <= 65536
        assert after["layer"]["zswpwb"] == before["zswpwb"]  # nothing of it demoted since
        assert after["knobs"] == {"resident_bytes": 2097152, "zswap_max_bytes": 65536,
                                  "writeback": False, "record": None}
        assert ctl(d, "client", str(sid), "zswap_max_bytes", "max").stdout == \
            "zswap_max_bytes = max\n"


def test_ctl_needs_root_or_the_daemon_uid(tmp_path: Path) -> None:
    config = BASE_CONFIG.replace("[daemon]", "[daemon]\nallowed_users = [65534]")
    pub = Path(tempfile.mkdtemp(prefix="swapd-ctl-"))
    os.chmod(pub, 0o755)
    try:
        with daemon_running(tmp_path, config) as d:
            link = pub / "s.sock"
            os.link(d.socket, link)
            os.chmod(link, 0o666)
            code = f"""
import os, json, sys
sys.path.insert(0, {str(ROOT)!r})
from swapd.client import connect
from swapd.errors import RequestError
os.setgid(65534); os.setuid(65534)
with connect({str(link)!r}) as c:
    seen = c.ctl("reclaim.policy")
    try:
        c.ctl("reclaim.policy", "fifo", set_value=True)
        print(json.dumps(dict(seen=seen, refused=None)))
    except RequestError as exc:
        print(json.dumps(dict(seen=seen, refused=exc.code, message=str(exc))))
"""
            try:
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   timeout=60)
            finally:
                os.chmod(d.socket, 0o660)
                link.unlink()
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout.splitlines()[-1])
            assert out["seen"] == "clock" and out["refused"] == "permission", out
            assert "root and the daemon's uid" in out["message"]
            assert stats_all(d.socket)["daemon"]["info"]["reclaim_policy"] == "clock"
    finally:
        pub.rmdir()


def test_sighup_reloads_live_keys_and_refuses_the_rest_by_name(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d, client(d) as (p, _sid):
        d.config.write_text(BASE_CONFIG + 'policy = "s3fifo"\n[pager]\nreadahead_max = 16\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in d.log_text(), what="reload")
        s = stats_all(d.socket)["daemon"]
        assert s["info"]["reclaim_policy"] == "s3fifo"
        assert s["knobs"]["pager.readahead_max"] == 16
        assert s["last_reload"]["ok"] is True
        assert s["config"]["pager"]["readahead_max"] == 16
        touch_all(p)
        # a key that cannot change live: the whole reload is refused, by name
        d.config.write_text(BASE_CONFIG.replace('disk_bytes = "64M"', 'disk_bytes = "32M"')
                            + 'policy = "fifo"\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in d.log_text(), what="refusal")
        assert "[layer] disk_bytes cannot change in a running daemon" in d.log_text()
        s = stats_all(d.socket)["daemon"]
        assert s["info"]["reclaim_policy"] == "s3fifo" and s["last_reload"]["ok"] is False
        # a broken file: refused, the daemon keeps serving
        d.config.write_text("[reclaim\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "invalid TOML" in d.log_text(), what="refusal")
        touch_all(p)
        d.config.write_text(BASE_CONFIG)  # the test's clean-exit check reads nothing more


def test_stats_does_not_count_itself_and_shows_what_is_configured(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d, client(d) as (p, sid):
        touch_all(p)
        r = subprocess.run([sys.executable, "-m", "swapd", "stats", "--socket", str(d.socket),
                            "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["daemon"]["clients"] == 1 and [c["session"] for c in s["clients"]] == [sid]
        info = s["daemon"]["info"]
        from swapd import __version__

        assert info["version"] == __version__ and info["backend"] == "zsmalloc"
        assert s["daemon"]["config"]["layer"]["pool_limit_bytes"] == 512 * 1024
        assert s["daemon"]["config_file"] == str(d.config)
        # one meaning per name: pool_total_size is the pool's pages, in the total only
        assert "pool_total_size" in s["total"]["layer"]
        assert "pool_total_size" not in s["clients"][0]["layer"]
        assert "compr_data_size" in s["clients"][0]["layer"]
        text = subprocess.run([sys.executable, "-m", "swapd", "stats", "--socket",
                               str(d.socket)], capture_output=True, text=True, timeout=60,
                              cwd=ROOT).stdout
        assert f"swapd {__version__} pid" in text and "1 client(s)" in text
        assert "reclaim policy clock" in text
        r = subprocess.run([sys.executable, "-m", "swapd", "stats", "--socket", str(d.socket),
                            "--config"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        import tomllib

        from swapd.config import config_from_dict

        effective = config_from_dict(tomllib.loads(r.stdout))  # valid TOML, a valid config
        assert effective.layer.pool_limit_bytes == 512 * 1024
        assert effective.reclaim.batch_pages == 32


def test_stats_all_pages_many_clients(tmp_path: Path) -> None:
    """More clients than one frame can describe: the reply is paged, the client joins it."""
    with daemon_running(tmp_path) as d:
        conns = [connect(d.socket, name=f"idle{i}") for i in range(120)]
        try:
            s = stats_all(d.socket)
            assert s["daemon"]["clients"] == 120
            assert sorted(c["name"] for c in s["clients"]) == sorted(f"idle{i}"
                                                                    for i in range(120))
            assert "next_after" not in s
        finally:
            for c in conns:
                c.close()


def test_daemon_logs_startup_and_shutdown_for_journald(tmp_path: Path) -> None:
    """INFO lines say what was configured; with JOURNAL_STREAM naming its stderr the
    daemon prefixes syslog priorities and writes no timestamps of its own."""
    log = tmp_path / "journal.log"
    with open(log, "wb") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        cfg = tmp_path / "c.toml"
        cfg.write_text('[reclaim]\npolicy = "sieve"\n[backend.zsmalloc]\nlock = "pool"\n')
        proc = subprocess.Popen([sys.executable, "-m", "swapd", "serve", "--socket",
                                 str(tmp_path / "s.sock"), "--state-dir", str(tmp_path / "st"),
                                 "--config", str(cfg)], stdout=f, stderr=f, env=env, cwd=ROOT)
        try:
            wait_for(lambda: "serving" in log.read_text(), what="startup")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert proc.returncode == 0
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("<") for line in lines), lines
    start = next(line for line in lines if "starting" in line)
    assert start.startswith("<6>swapd.serve: swapd ")
    assert f"config {cfg}" in start and "reclaim sieve" in start and "'lock': 'pool'" in start
    assert any(line.startswith("<6>") and "swapd stopped" in line for line in lines)
    assert not any(line[3:7].isdigit() for line in lines), "own timestamps under journald"


def test_serve_refuses_a_misspelt_plugin_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[reclaim]\npolicy = "clok"\n')
    r = subprocess.run([sys.executable, "-m", "swapd", "serve", "--socket",
                        str(tmp_path / "s.sock"), "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(
        "error: [reclaim] policy: no swapd.policies plugin named 'clok'")
    assert not (tmp_path / "s.sock").exists()


def test_ctl_error_for_bad_request(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d, connect(d.socket) as c:
        with pytest.raises(RequestError) as ei:
            c.ctl("reclaim.policy", 5, set_value=True)
        assert ei.value.code == "bad_request" and "expected a string" in str(ei.value)
