"""``swapd exporter``: serve a running daemon's counters as Prometheus metrics.

Each scrape of ``http://LISTEN/metrics`` sends one ``stats`` request over the
daemon's control socket (:mod:`swapd.metrics`): kernel-named counters in
total and per client, and the fault service-time histogram
``swapd_fault_duration_seconds``.  ``--textfile DIR`` writes ``DIR/swapd.prom``
for node_exporter's textfile collector instead (atomically, every
``--interval`` seconds, or once with ``--once``).  Runs under
``systemd/swapd-exporter.service``, so that the daemon's unit keeps
``PrivateNetwork=yes``.  SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from swapd.errors import ConfigError

HELP = "serve the daemon's counters as Prometheus metrics (/metrics or a textfile)"
LOG_LEVEL = logging.INFO
__all__ = ["HELP", "add_arguments", "parse_listen", "run"]

log = logging.getLogger("swapd.exporter")

DEFAULT_LISTEN = "127.0.0.1:9864"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--socket``, ``--listen``, ``--textfile``, ``--interval``, ``--once``."""
    p.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    p.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                   help=f"address of the /metrics endpoint (default {DEFAULT_LISTEN}; "
                        "port 0 picks a free one and logs it)")
    p.add_argument("--textfile", metavar="DIR",
                   help="write DIR/swapd.prom for node_exporter instead of serving HTTP")
    p.add_argument("--interval", type=float, default=15.0, metavar="S",
                   help="seconds between textfile writes (default 15)")
    p.add_argument("--once", action="store_true", help="write the textfile once and exit")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ConfigError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def run(args: argparse.Namespace) -> int:
    """Serve (or write) the metrics until SIGTERM/SIGINT; returns the exit status."""
    from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile

    from swapd.metrics import ClientSource, SwapdCollector

    source = ClientSource(args.socket)
    registry = CollectorRegistry(auto_describe=False)
    collector = SwapdCollector(source)
    registry.register(collector)
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        if args.textfile:
            d = Path(args.textfile)
            if not d.is_dir():
                raise ConfigError(f"--textfile: {d} is not a directory")
            if args.interval <= 0:
                raise ConfigError(f"--interval: must be positive, got {args.interval}")
            out = str(d / "swapd.prom")
            while True:
                write_to_textfile(out, registry)
                if args.once or stop.wait(args.interval):
                    break
            return 0 if collector.errors == 0 or not args.once else 1
        host, port = parse_listen(args.listen)
        try:
            server, thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(f"--listen {args.listen}: {exc.strerror or exc}") from exc
        bound = server.server_address
        log.info("swapd exporter (pid %d) serving http://%s:%d/metrics for %s", os.getpid(),
                 bound[0], bound[1], args.socket or "the default socket")
        stop.wait()
        server.shutdown()
        server.server_close()
        thread.join(5)
        log.info("swapd exporter stopped")
        return 0
    finally:
        source.close()
