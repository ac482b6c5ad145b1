"""`swapd demo` end to end at a small size: it starts its own daemon, verifies every page,
cleans up, and reports the figures the README promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_daemon_helpers import ROOT, needs_uffd

pytestmark = needs_uffd


def test_demo_small_run_verifies_and_cleans_up(tmp_path: Path) -> None:
    # its own TMPDIR: other demos running on the machine cannot add or remove work dirs here
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "swapd", "demo", "--size", "8M", "--limit", "1M",
                        "--ops", "2000", "--json"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["mismatches"] == 0 and r["pages"] == 2048
    c = r["counters"]
    # every page was placed by a fault of its own or zero-filled ahead of a sequential one
    assert c["faults"] + c["zero_ahead_pages"] >= 2048
    assert c["swapins"] > 0 and c["evicted_pages"] > 0
    assert r["latency"]["count"] > 0 and r["latency"]["p99_us"] >= r["latency"]["p50_us"] > 0
    assert r["compression_ratio"] is not None and r["compression_ratio"] > 1.0
    assert r["layer"]["lru_inversions"] == 0
    assert "zswpwb" in r["layer"]
    assert set(r["phase_us_per_page"]) == {"fill", "random", "sequential", "verify"}
    assert not list(tmp_path.glob("swapd-demo-*")), "the demo left its work directory behind"


def test_demo_table_output() -> None:
    p = subprocess.run([sys.executable, "-m", "swapd", "demo", "--size", "4M", "--limit", "512K",
                        "--ops", "500", "--no-progress"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    for text in ("fault service time p50 / p99", "compression ratio", "writebacks",
                 "LRU inversions", "disk tier pages", "all pages verified"):
        assert text in p.stdout, p.stdout
