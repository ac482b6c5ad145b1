"""The daemon under real client processes on the real kernel (userfaultfd, memfd, pidfd).

Each test starts its own ``swapd serve`` (tests/test_daemon_helpers.py) with
invariant checks on, runs clients as subprocesses with timeouts, and checks
that the daemon exits cleanly and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_daemon_helpers import (
    BASE_CONFIG,
    ROOT,
    DaemonProc,
    client_cmd,
    daemon_running,
    needs_uffd,
    run_client,
    stats_all,
    wait_for,
)

pytestmark = needs_uffd


@pytest.mark.parametrize("inline", [True, False], ids=["inline-reclaim", "reclaim-thread"])
def test_integrity_under_churn(tmp_path: Path, inline: bool) -> None:
    """Random reads and writes against a shadow copy under a tiny limit: no mismatch."""
    config = BASE_CONFIG + f"inline = {'true' if inline else 'false'}\n"
    with daemon_running(tmp_path, config) as d:
        r = run_client("""
            rng = random.Random(7)
            with connect(SOCK) as c:
                c.set_limit(64 * 4096)
                reg = c.map(4 << 20)
                n = len(reg) // 4096
                shadow = bytearray(len(reg))
                for i in range(n):  # realistic-ish: half compressible, some zero pages
                    if i % 5 == 0:
                        continue
                    page = (rng.randbytes(16) * 256) if i % 2 else rng.randbytes(4096)
                    reg[i * 4096:(i + 1) * 4096] = page
                    shadow[i * 4096:(i + 1) * 4096] = page
                bad = 0
                for k in range(30000):
                    o = rng.randrange(len(reg) - 8)
                    if rng.random() < 0.3:
                        v = rng.randbytes(8)
                        reg[o:o + 8] = v
                        shadow[o:o + 8] = v
                    elif reg[o:o + 8] != shadow[o:o + 8]:
                        bad += 1
                bad += sum(reg[i:i + 4096] != shadow[i:i + 4096] for i in range(0, len(reg), 4096))
                out(bad=bad, stats=c.stats())
        """, d.socket)
        assert r["bad"] == 0
        c = r["stats"]["counters"]
        assert c["evicted_pages"] > 1000 and c["swapins"] > 1000, c
        # every eviction compressed the page, or dropped a still-clean one (its kept copy)
        assert r["stats"]["layer"]["zswpout"] + c["clean_drops"] >= \
            c["evicted_pages"] - c["store_rejects"]
        assert c["clean_drops"] > 0 and c["clean_faults"] > 0, c


@pytest.mark.parametrize("inline", [True, False], ids=["inline-reclaim", "reclaim-thread"])
def test_eviction_write_race(tmp_path: Path, inline: bool) -> None:
    """Writes racing with eviction (WP faults on write-protected pages) lose nothing.

    Either the page's eviction is aborted (un-protect; the stored copy is dropped) or
    the fault is resolved after the punch (wake -> refault -> stored copy).
    """
    config = BASE_CONFIG + f"inline = {'true' if inline else 'false'}\n"
    with daemon_running(tmp_path, config) as d:
        r = run_client("""
            rng = random.Random(3)
            with connect(SOCK) as c:
                c.set_limit(4 << 20)
                reg = c.map(1 << 20)
                n = len(reg) // 4096
                shadow = bytearray(len(reg))
                stop = threading.Event()
                def writer():
                    wr = random.Random(5)
                    while not stop.is_set():
                        for _ in range(64):
                            o = wr.randrange(len(reg) - 8)
                            v = wr.randbytes(8)
                            reg[o:o + 8] = v
                            shadow[o:o + 8] = v
                        time.sleep(0)
                t = threading.Thread(target=writer)
                t.start()
                rounds = 0
                while rounds < 200:
                    rounds += 1
                    reg.advise(0, len(reg), "cold")
                    s = c.stats()["counters"]
                    if s["wp_faults"] >= 3 and rounds >= 5:
                        break
                stop.set()
                t.join()
                bad = sum(reg[i:i + 4096] != shadow[i:i + 4096] for i in range(0, len(reg), 4096))
                out(bad=bad, rounds=rounds, counters=c.stats()["counters"])
        """, d.socket, timeout=120)
        assert r["bad"] == 0
        c = r["counters"]
        assert c["wp_faults"] > 0, c
        assert c["evicted_pages"] > 0


def test_fork_child_gets_no_mapping_and_parent_stays_intact(tmp_path: Path) -> None:
    """MADV_DONTFORK: a child touching the region dies (SIGSEGV), never reads zeros."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            with connect(SOCK) as c:
                reg = c.map(256 * 4096)
                for i in range(256):
                    reg[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
                reg.advise(0, len(reg), "cold")
                pid = os.fork()
                if pid == 0:  # child 1: the client is unusable, the region unmapped
                    try:
                        c.ping()
                        os._exit(3)
                    except DaemonGoneError:
                        pass
                    os._exit(0)
                _, st1 = os.waitpid(pid, 0)
                pid = os.fork()
                if pid == 0:  # child 2: touches the (not inherited) mapping
                    x = reg[5 * 4096]
                    os._exit(4)
                _, st2 = os.waitpid(pid, 0)
                ok = all(reg[i * 4096:i * 4096 + 8] == i.to_bytes(8, "little")
                         for i in range(256))
                c.ping()
                out(st1=st1, sig2=os.WTERMSIG(st2) if os.WIFSIGNALED(st2) else None,
                    ok=ok, swapins=c.stats()["counters"]["swapins"])
        """, d.socket)
        assert r["st1"] == 0
        assert r["sig2"] == signal.SIGSEGV
        assert r["ok"] and r["swapins"] > 0


def test_munmap_frees_the_region(tmp_path: Path) -> None:
    """A raw munmap (EVENT_UNMAP) drops the region; the other region is untouched."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            with connect(SOCK) as c:
                a = c.map(128 * 4096)
                b = c.map(128 * 4096)
                for reg in (a, b):
                    for i in range(128):
                        reg[i * 4096:i * 4096 + 8] = (i + 1).to_bytes(8, "little")
                    reg.advise(0, len(reg), "cold")
                before = c.stats()
                mmap.mmap.close(a)  # the plain munmap, without telling the daemon
                after = c.stats()
                ok = all(b[i * 4096:i * 4096 + 8] == (i + 1).to_bytes(8, "little")
                         for i in range(128))
                a.close()  # the library's close still works (daemon: not_found)
                out(before=before["regions"], after=after["regions"], ok=ok,
                    swapped=after["pages"]["SWAPPED"])
        """, d.socket)
        assert r["before"] == 2 and r["after"] == 1
        assert r["ok"] and r["swapped"] == 128


def test_partial_munmap_forgets_only_that_part(tmp_path: Path) -> None:
    """munmap of the middle of a region: those pages become GONE, the rest stays served."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            libc = ctypes.CDLL(None, use_errno=True)
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            with connect(SOCK) as c:
                reg = c.map(64 * 4096)
                for i in range(64):
                    reg[i * 4096:i * 4096 + 8] = (i + 3).to_bytes(8, "little")
                reg.advise(0, 40 * 4096, "cold")  # 0..39 evicted, 40..63 resident
                rc = libc.munmap(reg.address + 16 * 4096, 32 * 4096)  # pages 16..47
                s = c.stats()
                ok = all(reg[i * 4096:i * 4096 + 8] == (i + 3).to_bytes(8, "little")
                         for i in list(range(16)) + list(range(48, 64)))
                out(rc=rc, pages=s["pages"], resident=s["resident_pages"], ok=ok,
                    stored=s["layer"]["stored_pages"] + s["layer"].get("disk_pages", 0))
        """, d.socket)
        assert r["rc"] == 0 and r["ok"]
        assert r["pages"]["GONE"] == 32 and r["pages"]["SWAPPED"] == 16
        assert r["pages"]["RESIDENT"] == 16 and r["resident"] == 16
        assert r["stored"] == 16


def test_madvise_dontneed_keeps_data_and_advise_dontneed_discards(tmp_path: Path) -> None:
    """madvise(DONTNEED) on the shared mapping keeps contents (as the kernel does);
    Region.advise(..., "dontneed") discards them (zeros)."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            with connect(SOCK) as c:
                reg = c.map(128 * 4096)
                for i in range(128):
                    reg[i * 4096:i * 4096 + 8] = (i + 7).to_bytes(8, "little")
                reg.advise(0, 64 * 4096, "cold")  # half evicted, half resident
                reg.madvise(mmap.MADV_DONTNEED)
                kept = all(reg[i * 4096:i * 4096 + 8] == (i + 7).to_bytes(8, "little")
                           for i in range(128))
                reg.advise(0, 32 * 4096, "cold")
                reg.advise(0, 128 * 4096, "dontneed")
                zero = all(reg[i * 4096:(i + 1) * 4096] == bytes(4096) for i in range(128))
                out(kept=kept, zero=zero, stats=c.stats())
        """, d.socket)
        assert r["kept"] and r["zero"]
        assert r["stats"]["layer"].get("stored_pages", 0) == 0


def test_client_killed_mid_fault_frees_everything(tmp_path: Path) -> None:
    """SIGKILL a client while it faults: the pidfd ends the session, every tier is freed."""
    with daemon_running(tmp_path) as d:
        p = subprocess.Popen(client_cmd("""
            rng = random.Random(1)
            c = connect(SOCK)
            c.set_limit(32 * 4096)
            reg = c.map(2 << 20)
            for i in range(0, len(reg), 4096):
                reg[i:i + 4096] = rng.randbytes(64) * 64
            out(ready=1)
            while True:  # fault forever
                o = rng.randrange(len(reg) // 4096) * 4096
                reg[o:o + 8]
        """, d.socket), stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert '"ready"' in line, line
            wait_for(lambda: stats_all(d.socket)["total"]["counters"].get("swapins", 0) > 50,
                     what="faults in progress")
            p.kill()
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()

        def freed() -> bool:
            s = stats_all(d.socket)
            return s["daemon"]["clients"] == 0 and s["total"]["layer"]["stored_pages"] == 0 \
                and s["total"]["layer"].get("disk_pages", 0) == 0
        wait_for(freed, what="the killed client's pages to be freed")


def test_daemon_killed_client_fails_closed(tmp_path: Path) -> None:
    """SIGKILL the daemon: library calls raise DaemonGoneError; touching an evicted page
    blocks (the client keeps its uffd) -- nothing reads silently as zeros."""
    d = DaemonProc(tmp_path)
    try:
        p = subprocess.Popen(client_cmd("""
            c = connect(SOCK)
            reg = c.map(64 * 4096)
            for i in range(64):
                reg[i * 4096:i * 4096 + 8] = b"DATA%04d" % i
            reg.advise(0, 32 * 4096, "cold")  # pages 0..31 evicted, 32..63 resident
            out(ready=1)
            sys.stdin.readline()  # the test kills the daemon now
            try:
                c.ping()
                out(gone=False)
            except DaemonGoneError:
                out(gone=True)
            try:
                c.stats()
                out(again=False)
            except DaemonGoneError:
                out(again=True)
            out(resident=bytes(reg[40 * 4096:40 * 4096 + 8]).decode())
            out(evicted=bytes(reg[3 * 4096:3 * 4096 + 8]).hex())  # blocks here
        """, d.socket), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert p.stdout is not None and p.stdin is not None
            assert '"ready"' in p.stdout.readline()
            d.kill()
            p.stdin.write("go\n")
            p.stdin.flush()
            lines = [p.stdout.readline() for _ in range(3)]
            assert '"gone": true' in lines[0], lines
            assert '"again": true' in lines[1], lines
            assert '"resident": "DATA0040"' in lines[2], lines
            time.sleep(1.0)
            assert p.poll() is None, "the client should block on the evicted page"
            with open(f"/proc/{p.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            assert state in ("S", "D"), state
        finally:
            p.kill()
            rest = p.communicate(timeout=10)[0]
        assert "evicted" not in rest, rest
    finally:
        d.stop()


def test_two_clients_are_isolated(tmp_path: Path) -> None:
    """Two clients at once: each sees only its own data, stats and regions."""
    with daemon_running(tmp_path) as d:
        code = """
            tag = int(sys.argv[2])
            rng = random.Random(tag)
            with connect(SOCK) as c:
                c.set_limit(32 * 4096)
                reg = c.map(512 * 4096)
                for i in range(512):
                    reg[i * 4096:i * 4096 + 16] = b"%08d%08d" % (tag, i)
                for _ in range(3000):
                    i = rng.randrange(512)
                    assert reg[i * 4096:i * 4096 + 16] == b"%08d%08d" % (tag, i)
                ok = all(reg[i * 4096:i * 4096 + 16] == b"%08d%08d" % (tag, i)
                         for i in range(512))
                other = reg.id + (1 if tag == 1 else -1)
                try:
                    c._request("unmap", region=other)
                    foreign = "allowed"
                except RequestError as e:
                    foreign = e.code
                s = c.stats()
                out(ok=ok, regions=s["regions"], managed=s["managed_pages"], foreign=foreign,
                    session=s["session"])
                sys.stdin.readline()
        """
        procs = [subprocess.Popen([*client_cmd(code, d.socket), str(t)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT) for t in (1, 2)]
        try:
            import json
            res = []
            for p in procs:
                assert p.stdout is not None
                res.append(json.loads(p.stdout.readline()))
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("\n")
                p.stdin.flush()
                assert p.wait(30) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for r in res:
            assert r["ok"] and r["regions"] == 1 and r["managed"] == 512
            assert r["foreign"] == "not_found"
        assert res[0]["session"] != res[1]["session"]


def test_limits_enforced(tmp_path: Path) -> None:
    """Per-client limit and the daemon's global limit hold once reclaim settles."""
    config = BASE_CONFIG.replace('default_resident_bytes = "1M"',
                                 'default_resident_bytes = "1M"\nglobal_resident_bytes = "512K"')
    with daemon_running(tmp_path, config) as d:
        r = run_client("""
            with connect(SOCK) as c:
                eff = c.set_limit(256 * 4096)  # capped at the global 512K = 128 pages
                reg = c.map(1024 * 4096)
                for i in range(1024):
                    reg[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
                t0 = time.monotonic()
                while c.stats()["resident_pages"] > 128 and time.monotonic() - t0 < 20:
                    time.sleep(0.05)
                s = c.stats()
                ok = all(reg[i * 4096:i * 4096 + 8] == i.to_bytes(8, "little")
                         for i in range(1024))
                t0 = time.monotonic()
                while c.stats()["resident_pages"] > 128 and time.monotonic() - t0 < 20:
                    time.sleep(0.05)
                out(eff=eff, resident=s["resident_pages"], after=c.stats()["resident_pages"],
                    ok=ok, limit=s["limit_pages"])
        """, d.socket)
        assert r["eff"] == 128 * 4096 and r["limit"] == 128
        assert r["resident"] <= 128 and r["after"] <= 128
        assert r["ok"]


def test_refused_pages_stay_resident(tmp_path: Path) -> None:
    """No disk tier and a tiny pool: the layer refuses most stores; those pages stay
    resident (un-protected) and nothing is lost."""
    config = BASE_CONFIG.replace('disk_bytes = "64M"', 'disk = false').replace(
        'pool_limit_bytes = "512K"', 'pool_limit_bytes = "64K"')
    with daemon_running(tmp_path, config) as d:
        r = run_client("""
            rng = random.Random(2)
            with connect(SOCK) as c:
                c.set_limit(16 * 4096)
                reg = c.map(256 * 4096)
                shadow = bytearray(len(reg))
                for i in range(256):
                    page = rng.randbytes(4096)
                    reg[i * 4096:(i + 1) * 4096] = page
                    shadow[i * 4096:(i + 1) * 4096] = page
                reg.advise(0, len(reg), "cold")
                for i in range(0, len(reg), 4096):  # writes to refused pages must not hang
                    reg[i:i + 8] = b"w" * 8
                    shadow[i:i + 8] = b"w" * 8
                bad = sum(reg[i:i + 4096] != shadow[i:i + 4096] for i in range(0, len(reg), 4096))
                out(bad=bad, stats=c.stats())
        """, d.socket)
        assert r["bad"] == 0
        c = r["stats"]["counters"]
        assert c["store_rejects"] > 0, c
        layer = r["stats"]["layer"]
        assert layer["reject_compress_poor"] + layer["reject_reclaim_fail"] \
            + layer["reject_alloc_fail"] > 0, layer


@pytest.mark.parametrize("ra_max", [64, 1], ids=["readahead", "no-readahead"])
def test_sequential_readahead(tmp_path: Path, ra_max: int) -> None:
    """A sequential scan of evicted pages faults a few times with readahead, once per page
    without (readahead_max = 1); random access gets no readahead either way."""
    config = BASE_CONFIG + f"[pager]\nreadahead_max = {ra_max}\nreadahead_min = 1\n"
    with daemon_running(tmp_path, config) as d:
        r = run_client("""
            with connect(SOCK) as c:
                c.set_limit(4 << 20)
                reg = c.map(512 * 4096)
                for i in range(512):
                    reg[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
                reg.advise(0, len(reg), "cold")
                f0 = c.stats()["counters"]
                ok = all(reg[i * 4096:i * 4096 + 8] == i.to_bytes(8, "little")
                         for i in range(512))
                f1 = c.stats()["counters"]
                reg.advise(0, len(reg), "cold")
                for i in random.Random(1).sample(range(0, 512, 2), 100):
                    reg[i * 4096]
                f2 = c.stats()["counters"]
                out(ok=ok, seq_faults=f1["swapins"] - f0["swapins"],
                    seq_ra=f1["readahead_pages"] - f0["readahead_pages"],
                    rnd_ra=f2["readahead_pages"] - f1["readahead_pages"],
                    rnd_faults=f2["swapins"] - f1["swapins"])
        """, d.socket)
        assert r["ok"]
        if ra_max == 1:
            assert r["seq_ra"] == 0 and r["seq_faults"] == 512
        else:
            assert r["seq_faults"] + r["seq_ra"] == 512 and r["seq_faults"] < 30, r
        assert r["rnd_faults"] == 100 and r["rnd_ra"] <= 10, r


def test_corrupt_disk_page_is_poisoned_not_served(tmp_path: Path) -> None:
    """A page whose disk copy fails its checksum is never served: the access gets SIGBUS
    (UFFDIO_POISON), and every page read before it was correct."""
    config = BASE_CONFIG.replace('pool_limit_bytes = "512K"', 'pool_limit_bytes = "64K"')
    with daemon_running(tmp_path, config) as d:
        p = subprocess.Popen(client_cmd("""
            c = connect(SOCK)
            c.set_limit(16 * 4096)
            reg = c.map(256 * 4096)
            for i in range(256):
                reg[i * 4096:(i + 1) * 4096] = random.Random(i).randbytes(4096)
            reg.advise(0, len(reg), "cold")
            out(disk=c.stats()["layer"].get("disk_pages", 0))
            sys.stdin.readline()  # the test corrupts the disk tier now
            for i in range(256):
                if reg[i * 4096:(i + 1) * 4096] != random.Random(i).randbytes(4096):
                    out(bad=i)
                    sys.exit(3)
            out(bad=None)
        """, d.socket), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert p.stdout is not None and p.stdin is not None
            first = p.stdout.readline()
            assert '"disk"' in first and '"disk": 0' not in first, first
            [disk] = list(d.state.glob("*.swap"))
            with open(disk, "r+b") as f:
                size = f.seek(0, 2)
                f.seek(0)
                f.write(b"\xa5" * size)
            p.stdin.write("go\n")
            p.stdin.flush()
            rest, _ = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == -signal.SIGBUS, (p.returncode, rest)
        assert '"bad"' not in rest, rest
        wait_for(lambda: stats_all(d.socket)["total"]["counters"]["poisoned_pages"] >= 1,
                 what="the poisoned page to be counted")


def test_advice_cold_willneed(tmp_path: Path) -> None:
    """cold evicts the range now; willneed brings it back (within the limit)."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            with connect(SOCK) as c:
                c.set_limit(1 << 20)
                reg = c.map(128 * 4096)
                for i in range(128):
                    reg[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
                reg.advise(0, 128 * 4096, "cold")
                cold = c.stats()["pages"]
                reg.advise(0, 64 * 4096, "willneed")
                warm = c.stats()
                ok = all(reg[i * 4096:i * 4096 + 8] == i.to_bytes(8, "little")
                         for i in range(128))
                out(cold=cold, warm=warm["pages"], faults=warm["counters"]["faults"], ok=ok)
        """, d.socket)
        assert r["cold"]["SWAPPED"] == 128 and r["cold"]["RESIDENT"] == 0
        assert r["warm"]["RESIDENT"] == 64 and r["warm"]["SWAPPED"] == 64
        assert r["ok"]


def test_stats_cli_and_notify(tmp_path: Path) -> None:
    """`swapd stats` (text and --json) against a live daemon; READY, STATUS and WATCHDOG
    were sent (sd_notify)."""
    import json

    with daemon_running(tmp_path, env={"WATCHDOG_USEC": "200000"}) as d:
        run_client("""
            with connect(SOCK) as c:
                reg = c.map(64 * 4096)
                reg[0:4] = b"abcd"
                reg.advise(0, 64 * 4096, "cold")
                out(ok=reg[0:4] == b"abcd")
        """, d.socket)
        cmd = [sys.executable, "-m", "swapd", "stats", "--socket", str(d.socket)]
        p = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=30,
                           cwd=ROOT)
        assert p.returncode == 0, p.stderr
        s = json.loads(p.stdout)
        assert set(s) == {"daemon", "total", "clients"}
        assert s["total"]["layer"]["zswpin"] >= 1 and "zswpout" in s["total"]["layer"]
        assert s["total"]["latency"]["count"] >= 1
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert p.returncode == 0 and "p50=" in p.stdout and "zswpout" in p.stdout, p.stdout
        deadline = time.monotonic() + 30  # a busy machine delays the loop, not the outcome
        while True:
            notes = d.drain_notifications()
            if (any("STATUS=serving 1 client" in n for n in notes)
                    and any(n == "WATCHDOG=1" for n in notes)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert notes[0].startswith("READY=1"), notes
        assert any("STATUS=serving 1 client" in n for n in notes), notes
        assert any(n == "WATCHDOG=1" for n in notes), notes


def test_serve_refuses_bad_config_by_name(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[reclaim]\npolcy = 'clock'\n")
    p = subprocess.run([sys.executable, "-m", "swapd", "serve", "--socket",
                        str(tmp_path / "s.sock"), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2
    assert "unknown key 'polcy' in [reclaim]" in p.stderr


def test_client_gone_when_no_daemon(tmp_path: Path) -> None:
    from swapd.client import connect
    from swapd.errors import DaemonGoneError

    with pytest.raises(DaemonGoneError, match="no swapd daemon"):
        connect(tmp_path / "nothing.sock")


@pytest.mark.slow
def test_integrity_long_churn(tmp_path: Path) -> None:
    """The churn test at a larger size (slow)."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            rng = random.Random(11)
            with connect(SOCK) as c:
                c.set_limit(256 * 4096)
                reg = c.map(32 << 20)
                shadow = bytearray(len(reg))
                for k in range(200000):
                    o = rng.randrange(len(reg) - 8)
                    if rng.random() < 0.4:
                        v = rng.randbytes(8)
                        reg[o:o + 8] = v
                        shadow[o:o + 8] = v
                    else:
                        assert reg[o:o + 8] == shadow[o:o + 8], o
                bad = sum(reg[i:i + 4096] != shadow[i:i + 4096] for i in range(0, len(reg), 4096))
                out(bad=bad)
        """, d.socket, timeout=900)
        assert r["bad"] == 0




def test_same_filled_pages_swap_in_by_copy(tmp_path: Path) -> None:
    """Same-filled pages (zero and other fill values) mixed with ordinary ones come back
    exactly, through the single-page fault path and inside readahead runs, and are
    writable afterwards (placed by UFFDIO_COPY without write protection)."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            def page(i):
                if i % 3 == 0:
                    return bytes(4096)
                if i % 3 == 1:
                    return bytes([i % 251 + 1]) * 4096
                return i.to_bytes(8, "little") * 512
            n = 256
            with connect(SOCK) as c:
                c.set_limit(4 << 20)
                reg = c.map(n * 4096)
                for i in range(n):
                    reg[i * 4096:(i + 1) * 4096] = page(i)
                reg.advise(0, len(reg), "cold")
                s0 = c.stats()
                order = random.Random(5).sample(range(0, n, 2), 40)  # random faults first
                bad = sum(reg[i * 4096:(i + 1) * 4096] != page(i) for i in order)
                bad += sum(reg[i * 4096:(i + 1) * 4096] != page(i) for i in range(n))
                for i in range(0, n, 7):  # writable after the swap-in
                    reg[i * 4096] = 0xEE
                bad += sum(reg[i * 4096] != 0xEE or reg[i * 4096 + 1:(i + 1) * 4096]
                           != page(i)[1:] for i in range(0, n, 7))
                out(bad=bad, s0=s0, s1=c.stats())
        """, d.socket)
        assert r["bad"] == 0
        s0, s1 = r["s0"], r["s1"]
        assert s0["layer"]["same_filled_pages"] >= 2 * 256 // 3 - 2, s0["layer"]
        c0, c1 = s0["counters"], s1["counters"]
        assert c1["swapins"] - c0["swapins"] >= 40, c1
        assert c1["readahead_pages"] - c0["readahead_pages"] > 0, c1
        assert c1["poisoned_pages"] == 0


def test_record_writes_faults_and_evictions_that_sim_replays(tmp_path: Path) -> None:
    """``swapd serve --record FILE``: faults (r/w) and evictions (e) as a CSV trace, which
    ``swapd sim`` replays (accesses only; the daemon's evictions stay in the file)."""
    trace = tmp_path / "rec.csv"
    with daemon_running(tmp_path, BASE_CONFIG, extra=["--record", str(trace)]) as d:
        r = run_client("""
            with connect(SOCK) as c:
                c.set_limit(4 << 20)
                reg = c.map(256 * 4096)
                for i in range(256):
                    reg[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
                reg.advise(0, len(reg), "cold")
                ok = all(reg[i * 4096:i * 4096 + 8] == i.to_bytes(8, "little")
                         for i in range(0, 256, 3))
                out(ok=ok)
        """, d.socket)
        assert r["ok"]
    from swapd.sim.trace import read_trace

    events = list(read_trace(trace, "csv", events=True))
    ops = {op: sum(1 for e in events if e.op == op) for op in "rwe"}
    # the fill faults once per zero-filled run (zero-ahead), not once per page
    assert ops["w"] >= 1 and ops["e"] >= 256 and ops["r"] >= 1, ops
    assert [e.time for e in events] == sorted(e.time for e in events)
    sim = subprocess.run([sys.executable, "-m", "swapd", "sim", "--trace", str(trace),
                          "--policy", "lru", "--capacity", "64", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(sim.stdout)["accesses"] == ops["r"] + ops["w"]


@pytest.mark.parametrize("colocate", [True, False], ids=["colocate", "no-colocate"])
def test_colocate_pins_the_loop_and_the_faulting_thread_together(tmp_path: Path,
                                                                 colocate: bool) -> None:
    """``[pager] colocate``: after faults, the faulting thread and the daemon's loop share one
    CPU, the one the thread was running on; switched off, the client's affinity is untouched."""
    config = BASE_CONFIG + f"[pager]\ncolocate = {'true' if colocate else 'false'}\n"
    with daemon_running(tmp_path, config) as d:
        r = run_client("""
            before = sorted(os.sched_getaffinity(0))
            with connect(SOCK) as c:
                reg = c.map(512 * 4096)
                for i in range(512):
                    reg[i * 4096] = 1
                out(before=before, after=sorted(os.sched_getaffinity(0)))
        """, d.socket)
        loop_cpus = sorted(os.sched_getaffinity(d.proc.pid))
    if colocate:
        assert len(r["after"]) == 1 and r["after"][0] in r["before"], r
        assert loop_cpus == r["after"], (loop_cpus, r)
    else:
        assert r["after"] == r["before"], r
