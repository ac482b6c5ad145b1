"""The client library against a live daemon: the Region object, limits, lifetime, recording."""

from __future__ import annotations

from pathlib import Path

from tests.test_daemon_helpers import daemon_running, needs_uffd, run_client

pytestmark = needs_uffd


def test_region_is_a_buffer_with_address_and_size(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d:
        r = run_client("""
            import ctypes
            with connect(SOCK) as c:
                reg = c.map(5000, name="buf")
                mv = memoryview(reg)
                addr = ctypes.addressof(ctypes.c_char.from_buffer(mv))
                res = dict(size=reg.size, len=len(reg), nbytes=mv.nbytes, same=addr == reg.address,
                           aligned=reg.address % 4096 == 0, name=reg.name, rep=repr(reg))
                mv[10:13] = b"xyz"
                res["slice"] = reg[10:13].decode()
                res["find"] = reg.find(b"xyz")
                del mv
                reg.close()
                reg.close()  # idempotent
                try:
                    reg.advise(0, 4096, "cold")
                    res["after_close"] = "no error"
                except Exception as e:
                    res["after_close"] = type(e).__name__
                res["regions"] = c.stats()["regions"]
                try:
                    c.map(0)
                except RequestError as e:
                    res["zero"] = e.code
                out(**res)
        """, d.socket)
        assert r["size"] == r["len"] == r["nbytes"] == 8192
        assert r["same"] and r["aligned"] and r["name"] == "buf" and "Region" in r["rep"]
        assert r["slice"] == "xyz" and r["find"] == 10
        assert r["after_close"] == "ProtocolError" and r["regions"] == 0
        assert r["zero"] == "bad_range"


def test_context_manager_closes_everything_and_fails_closed(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d:
        r = run_client("""
            c = connect(SOCK)
            with c:
                a = c.map(4096)
                b = c.map(8192)
                a[0:1] = b"a"
            try:
                c.ping()
                res = "no error"
            except DaemonGoneError:
                res = "DaemonGoneError"
            with connect(SOCK) as c2:
                n = c2.stats("all")["daemon"]["clients"]
            out(closed=[a.closed, b.closed], after=res, clients=n)
        """, d.socket)
        assert r["closed"] == [True, True]
        assert r["after"] == "DaemonGoneError"
        assert r["clients"] == 0  # the asking connection is not counted


def test_limit_zero_still_correct(tmp_path: Path) -> None:
    """With a resident limit of 0 every page is evicted right after use; data survives."""
    with daemon_running(tmp_path) as d:
        r = run_client("""
            with connect(SOCK) as c:
                eff = c.set_limit(0)
                reg = c.map(64 * 4096)
                for i in range(64):
                    reg[i * 4096:i * 4096 + 4] = i.to_bytes(4, "little")
                # the reclaimer evicts the 64 pages (within the hard slack) in the background:
                # wait for it (bounded), then read every page back from the layer
                end = time.monotonic() + 60
                while (c.stats()["counters"]["evicted_pages"] == 0
                       and time.monotonic() < end):
                    time.sleep(0.02)
                ok = all(reg[i * 4096:i * 4096 + 4] == i.to_bytes(4, "little")
                         for i in range(64))
                out(eff=eff, ok=ok, evicted=c.stats()["counters"]["evicted_pages"])
        """, d.socket)
        assert r["eff"] == 0 and r["ok"] and r["evicted"] > 0


def test_record_writes_a_trace_swapd_sim_reads(tmp_path: Path) -> None:
    from swapd.sim.trace import read_trace

    trace = tmp_path / "trace.csv"
    with daemon_running(tmp_path, extra=["--record", str(trace)]) as d:
        run_client("""
            with connect(SOCK) as c:
                reg = c.map(32 * 4096)
                for i in reversed(range(32)):  # not sequential: no zero-fill-ahead
                    reg[i * 4096] = 1
                reg.advise(0, 32 * 4096, "cold")
                for i in range(32):
                    reg[i * 4096]
                out(ok=1)
        """, d.socket)
    reqs = list(read_trace(trace, "csv"))
    writes = [q for q in reqs if q.op == "w"]
    reads = [q for q in reqs if q.op == "r"]
    assert len(writes) == 32 and len(reads) >= 1
    assert {q.page & 0xFFFFFFFF for q in writes} == set(range(32))
    assert all(q.size == 4096 for q in reqs)


def test_unprivileged_client_uses_user_mode_only(tmp_path: Path) -> None:
    """uid 65534 (allowed in the config) pages memory through the daemon; with
    vm.unprivileged_userfaultfd=0 that is a UFFD_USER_MODE_ONLY userfaultfd."""
    import contextlib
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from tests.test_daemon_helpers import BASE_CONFIG, ROOT

    config = BASE_CONFIG.replace("[daemon]", "[daemon]\nallowed_users = [65534]")
    pub = Path(tempfile.mkdtemp(prefix="swapd-unpriv-"))
    os.chmod(pub, 0o755)
    try:
        with daemon_running(tmp_path, config) as d:
            link = pub / "s.sock"
            os.link(d.socket, link)
            os.chmod(link, 0o666)
            code = f"""
import os, json, sys
sys.path.insert(0, {str(ROOT)!r})
from swapd.client import connect  # the interpreter's files are not readable by uid 65534
import swapd.kernel.uffd, swapd.kernel.errors
os.setgid(65534); os.setuid(65534)
with connect({str(link)!r}) as c:
    c.set_limit(16 * 4096)
    reg = c.map(128 * 4096)
    for i in range(128):
        reg[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
    reg.advise(0, 128 * 4096, "cold")
    ok = all(reg[i * 4096:i * 4096 + 8] == i.to_bytes(8, "little") for i in range(128))
    print(json.dumps(dict(ok=ok, swapins=c.stats()["counters"]["swapins"], uid=os.getuid())))
"""
            try:
                p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   timeout=120)
            finally:
                link.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # the daemon may be gone: the test says why
                    os.chmod(d.socket, 0o660)
            assert p.returncode == 0, p.stderr
            r = json.loads(p.stdout.splitlines()[-1])
            assert r["ok"] and r["swapins"] > 0 and r["uid"] == 65534
    finally:
        shutil.rmtree(pub, ignore_errors=True)


def test_garbage_collected_region_after_daemon_death_does_not_hang(tmp_path: Path) -> None:
    """A Region dropped without close() after the daemon died is unmapped without waiting
    for a reader of its UNMAP event (its uffd copy is closed first)."""
    import signal
    import subprocess

    from tests.test_daemon_helpers import ROOT, DaemonProc, client_cmd

    d = DaemonProc(tmp_path)
    try:
        p = subprocess.Popen(client_cmd("""
            import gc
            c = connect(SOCK)
            reg = c.map(64 * 4096)
            reg[0:4] = b"abcd"
            reg.advise(0, 64 * 4096, "cold")
            out(ready=1)
            sys.stdin.readline()
            del c, reg
            gc.collect()
            out(done=1)
        """, d.socket), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert p.stdout is not None and p.stdin is not None
            assert '"ready"' in p.stdout.readline()
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(10)
            p.stdin.write("\n")
            p.stdin.flush()
            out, _ = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert '"done"' in out and p.returncode == 0, out
    finally:
        d.stop()

