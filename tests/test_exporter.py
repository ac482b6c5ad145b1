"""``swapd exporter`` against a running daemon: scraped over real HTTP and parsed with
prometheus-client's own parser; the textfile mode; a daemon that is gone."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_daemon_helpers import ROOT, client_cmd, daemon_running, needs_uffd

CLIENT = """
    c = connect(SOCK, name="metrics-client")
    reg = c.map(256 * 4096)
    for i in range(256):
        reg[i * 4096:i * 4096 + 8] = b"PAGE%04d" % i
    reg.advise(0, 128 * 4096, "cold")
    for i in range(0, 128, 2):
        assert bytes(reg[i * 4096:i * 4096 + 8]) == b"PAGE%04d" % i
    out(ready=1, pid=os.getpid())
    sys.stdin.readline()
"""


@contextmanager
def exporter(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``swapd exporter ARGS --listen 127.0.0.1:0``; yields it and its /metrics URL."""
    p = subprocess.Popen([sys.executable, "-m", "swapd", "exporter", "--listen", "127.0.0.1:0",
                          *args], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        m = re.search(r"serving (http://\S+/metrics)", line)
        assert m, f"exporter did not start: {line}{p.stderr.read() if p.poll() else ''}"
        yield p, m.group(1)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    assert p.returncode == 0, p.returncode


def scrape(url: str) -> dict[str, Any]:
    """GET ``url`` and parse it: family name -> family."""
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {sample or family} {labels} in {fams[family].samples}")


@needs_uffd
def test_scrape_over_http_parses_with_prometheus_parser(tmp_path: Path) -> None:
    with daemon_running(tmp_path) as d:
        client = subprocess.Popen(client_cmd(CLIENT, d.socket), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert client.stdout is not None and client.stdin is not None
            ready = client.stdout.readline()
            assert '"ready"' in ready, ready
            with exporter("--socket", str(d.socket)) as (_, url):
                fams = scrape(url)
                assert value(fams, "swapd_up") == 1
                # kernel names under Prometheus' conventions, in total
                assert value(fams, "swapd_zswpout", "swapd_zswpout_total") >= 1
                assert value(fams, "swapd_lru_inversions", "swapd_lru_inversions_total") == 0
                assert fams["swapd_zswpout"].type == "counter"
                assert fams["swapd_pool_total_size_bytes"].type == "gauge"
                assert value(fams, "swapd_pool_total_size_bytes") > 0
                assert value(fams, "swapd_faults", "swapd_faults_total") >= 64
                # each tier of the chain, labelled with its index and name
                assert value(fams, "swapd_tier_entries", tier="0", name="compressed") >= 0
                assert value(fams, "swapd_tier_available", tier="1", name="disk") == 1
                assert fams["swapd_tier_demoted_in"].type == "counter"
                # per client, labelled; the exporter's own connection is not a client
                pid = str(client.pid)
                assert value(fams, "swapd_client_faults", "swapd_client_faults_total",
                             pid=pid, name="metrics-client") >= 64
                assert value(fams, "swapd_client_zswpout", "swapd_client_zswpout_total",
                             pid=pid) >= 1
                assert value(fams, "swapd_client_compr_data_size_bytes", pid=pid) >= 0
                assert "swapd_client_pool_total_size_bytes" not in fams  # one meaning per name
                assert value(fams, "swapd_clients") == 1
                # the fault service-time histogram: cumulative buckets, count = faults served
                h = fams["swapd_fault_duration_seconds"]
                assert h.type == "histogram"
                buckets = [(float(s.labels["le"]), s.value) for s in h.samples
                           if s.name.endswith("_bucket")]
                assert buckets == sorted(buckets) and buckets[-1][0] == float("inf")
                count = value(fams, "swapd_fault_duration_seconds",
                              "swapd_fault_duration_seconds_count")
                assert buckets[-1][1] == count >= 64
                assert value(fams, "swapd_fault_duration_seconds",
                             "swapd_fault_duration_seconds_sum") > 0
                assert value(fams, "swapd_client_fault_duration_seconds",
                             "swapd_client_fault_duration_seconds_count", pid=pid) >= 64
                info = fams["swapd_info"].samples[0].labels
                assert info["backend"] == "zsmalloc" and info["reclaim_policy"] == "clock"
                # a second scrape over the same connection sees the counters again
                assert value(scrape(url), "swapd_up") == 1
        finally:
            client.kill()
            client.communicate(timeout=10)


@needs_uffd
def test_textfile_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with daemon_running(tmp_path / "d") as d:
        out = tmp_path / "textfile"
        out.mkdir()
        p = subprocess.run([sys.executable, "-m", "swapd", "exporter", "--socket",
                            str(d.socket), "--textfile", str(out), "--once"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        fams = {f.name: f for f in text_string_to_metric_families(
            (out / "swapd.prom").read_text())}
        assert value(fams, "swapd_up") == 1 and value(fams, "swapd_clients") == 0
        assert [x.name for x in out.iterdir()] == ["swapd.prom"]  # written atomically


def test_daemon_gone_is_up_0(tmp_path: Path) -> None:
    with exporter("--socket", str(tmp_path / "nobody.sock")) as (_, url):
        fams = scrape(url)
        assert value(fams, "swapd_up") == 0 and set(fams) == {"swapd_up"}


@pytest.mark.parametrize("args,message", [
    (["--listen", "localhost"], "error: --listen: expected HOST:PORT, got 'localhost'"),
    (["--textfile", "/nonexistent-dir-xyz", "--once"],
     "error: --textfile: /nonexistent-dir-xyz is not a directory"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, "-m", "swapd", "exporter", *args], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip() == message, p.stderr
