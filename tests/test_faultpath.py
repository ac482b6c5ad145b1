"""The fault path's resident limit, clean pages and fairness, on the real kernel.

The resident limit is checked from outside the daemon: the client samples its
memfd's allocated blocks (``fstat`` ``st_blocks``) from a thread while it scans,
and compares them with the daemon's own count after each step.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_daemon_helpers import BASE_CONFIG, daemon_running, needs_uffd, run_client

pytestmark = needs_uffd

# batch 32 pages, no slack: the hard limit of issue 9
LIMIT_CONFIG = BASE_CONFIG.replace("hard_slack_pages = 64", "hard_slack_pages = 0")

SCAN = """
import threading
LIMIT = 256
with connect(SOCK) as c:
    c.set_limit(LIMIT * 4096)
    reg = c.map(4096 * 4096)
    n = len(reg) // 4096
    view = memoryview(reg)
    fd = reg._memfd
    peak = [0]
    stop = threading.Event()
    def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], os.fstat(fd).st_blocks * 512 // 4096)
            time.sleep(0.0005)
    t = threading.Thread(target=sampler)
    t.start()
    checks = []
    page = bytes(range(256)) * 16
    for i in range(n):
        view[i * 4096:(i + 1) * 4096] = page[i % 256:] + page[:i % 256]
        if i % 512 == 511:
            checks.append((c.stats()["resident_pages"], os.fstat(fd).st_blocks // 8))
    bad = 0
    for rep in range(2):
        for i in range(n):
            if view[i * 4096 + 7] != (i % 256 + 7) % 256:
                bad += 1
            if i % 512 == 511:
                checks.append((c.stats()["resident_pages"], os.fstat(fd).st_blocks // 8))
    stop.set()
    t.join()
    view.release()
    out(bad=bad, peak=peak[0], checks=checks, stats=c.stats())
"""


def test_hard_limit_holds_during_sequential_scan(tmp_path: Path) -> None:
    """A fill and two sequential scans (readahead and zero-fill-ahead at full window) of
    16 MiB under a 1 MiB limit: the memfd never holds more than the limit plus one
    eviction batch, and the daemon's count agrees with the memfd's allocated blocks."""
    with daemon_running(tmp_path, LIMIT_CONFIG) as d:
        r = run_client(SCAN, d.socket, timeout=180)
    assert r["bad"] == 0
    c = r["stats"]["counters"]
    assert c["readahead_pages"] > 4096 and c["zero_ahead_pages"] > 1024, c
    assert r["peak"] <= 256 + 32, r["peak"]
    for daemon_count, blocks in r["checks"]:
        # the daemon may evict in the background between its reply and our fstat: at
        # most one background pass (low watermark 16 + batch 32 pages)
        assert daemon_count - 48 <= blocks <= daemon_count <= 256, r["checks"]
    assert c["charge_overruns"] == 0
    assert c["direct_reclaims"] > 0


def test_clean_pages_are_dropped_not_compressed_again(tmp_path: Path) -> None:
    """Pages brought back by reads are placed write-protected with their copy kept: their
    next eviction only drops them (clean_drops, no new compression); a write frees the copy
    (WP fault) and the data stays right."""
    with daemon_running(tmp_path, LIMIT_CONFIG) as d:
        r = run_client("""
            with connect(SOCK) as c:
                c.set_limit(256 * 4096)
                reg = c.map(1024 * 4096)
                for i in range(1024):
                    reg[i * 4096:i * 4096 + 16] = i.to_bytes(16, "little")
                reg.advise(0, len(reg), "cold")
                s0 = c.stats()
                ok = all(reg[i * 4096:i * 4096 + 16] == i.to_bytes(16, "little")
                         for i in range(1024))
                s1 = c.stats()
                reg.advise(0, len(reg), "cold")
                s2 = c.stats()
                ok = ok and all(reg[i * 4096:i * 4096 + 16] == i.to_bytes(16, "little")
                                for i in range(1024))
                s2b = c.stats()
                for i in range(1024 - 128, 1024):  # resident and clean: the last ones read
                    reg[i * 4096 + 100:i * 4096 + 104] = b"dirt"
                s3 = c.stats()
                reg.advise(0, len(reg), "cold")
                ok = ok and all(reg[i * 4096:i * 4096 + 16] == i.to_bytes(16, "little")
                                and (reg[i * 4096 + 100:i * 4096 + 104] == b"dirt") == (i >= 896)
                                for i in range(1024))
                out(ok=ok, s0=s0, s1=s1, s2=s2, s2b=s2b, s3=s3)
        """, d.socket, timeout=120)
    assert r["ok"]
    c1, c2, c2b, c3 = (r[k]["counters"] for k in ("s1", "s2", "s2b", "s3"))
    l1, l2, l3 = (r[k]["layer"] for k in ("s1", "s2b", "s3"))
    assert c1["clean_faults"] > 0
    assert l1["clean_kept_bytes"] > 0
    # the second advise cold found the re-read pages clean: dropped, nothing compressed
    evicted = c2["evicted_pages"] - c1["evicted_pages"]
    assert evicted >= 128 and c2["clean_drops"] - c1["clean_drops"] == evicted, (c1, c2)
    # writes freed the kept copies of the written pages (WP faults), the rest stayed clean
    assert c3["wp_faults"] - c2b["wp_faults"] >= 100, (c2b, c3)
    assert l3["clean_kept_bytes"] < l2["clean_kept_bytes"], (l2, l3)


def test_long_advise_cold_does_not_hold_other_clients_or_the_watchdog(tmp_path: Path) -> None:
    """Client A evicts 32 MiB with one ``advise cold`` while client B keeps faulting: some of
    B's faults are served while A's request is still running, and the watchdog is fed
    during it (both checked by order of events on CLOCK_MONOTONIC, not by durations)."""
    import subprocess
    import threading
    import time

    from tests.test_daemon_helpers import ROOT, client_cmd

    config = LIMIT_CONFIG + "[daemon]\nwatchdog_interval_s = 0.01\n"
    config = config.replace("[daemon]\ncheck_invariants = true\n", "", 1)
    flag = tmp_path / "a-done"
    with daemon_running(tmp_path, config) as d:
        stamps: list[tuple[float, str]] = []
        stop = threading.Event()

        def listen() -> None:
            d._notify.settimeout(0.05)
            while not stop.is_set():
                try:
                    msg = d._notify.recv(4096).decode()
                except (TimeoutError, OSError):
                    continue
                stamps.append((time.monotonic(), msg))

        t = threading.Thread(target=listen)
        t.start()
        b = subprocess.Popen(client_cmd(f"""
            done = []
            rng = random.Random(5)
            with connect(SOCK) as c:
                c.set_limit(256 * 4096)
                reg = c.map(1024 * 4096)
                for i in range(1024):
                    reg[i * 4096] = i & 0xff
                print("ready", flush=True)
                while not os.path.exists({str(flag)!r}):
                    i = rng.randrange(1024)
                    if reg[i * 4096] != i & 0xff:
                        raise SystemExit("wrong data")
                    done.append(time.monotonic())
                out(done=done)
        """, d.socket), stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert b.stdout is not None and b.stdout.readline().strip() == "ready"
            a = run_client(f"""
                with connect(SOCK) as c:
                    c.set_limit(8192 * 4096)
                    reg = c.map(8192 * 4096)
                    for i in range(8192):
                        reg[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
                    t0 = time.monotonic()
                    n = reg.advise(0, len(reg), "cold")
                    t1 = time.monotonic()
                    open({str(flag)!r}, "w").close()
                    out(t0=t0, t1=t1, stats=c.stats())
            """, d.socket, timeout=120)
            out, _ = b.communicate(timeout=60)
        finally:
            if b.poll() is None:
                b.kill()
                b.wait()
            stop.set()
            t.join()
    assert b.returncode == 0
    done = [x for x in json.loads(out.strip().splitlines()[-1])["done"]]
    t0, t1 = a["t0"], a["t1"]
    assert a["stats"]["counters"]["evicted_pages"] >= 8000
    assert any(t0 < x < t1 for x in done), "no fault of B was served during A's advise cold"
    assert any(t0 < ts < t1 and "WATCHDOG=1" in m.split("\n") for ts, m in stamps), \
        "the watchdog was not fed during A's advise cold"
