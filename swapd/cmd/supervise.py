"""swapd supervise: run ``swapd serve`` under a small service manager, for hosts without systemd.

It is the service manager's side of the notify protocol (``swapd.kernel.fdstore``,
the rules of systemd's ``src/core/service.c``): it gives the daemon a notify
socket and a file descriptor store, restarts the daemon whenever it exits, and
passes the stored descriptors -- the daemon's state, every client's memfd,
userfaultfd and connection, the listening socket -- to the next one with
``LISTEN_FDS``/``LISTEN_FDNAMES``/``LISTEN_PID``.  The daemon cannot tell it from
systemd: it has one code path for both.  Clients see a pause while the daemon
restarts, never an error.

SIGTERM/SIGINT stop the daemon (SIGTERM) and release the store, as ``systemctl
stop`` does: the clients then fail closed.  SIGHUP is passed on to the daemon.
``swapd ctl restart`` or a SIGTERM sent to the daemon itself restarts it.  When
the daemon refuses the stored state (exit status 78: a format it cannot read),
the store is kept and the supervisor waits for SIGHUP to try again.  More
than ``--burst`` starts within ten seconds give up (systemd's
``StartLimitBurst=``), exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import time

log = logging.getLogger("swapd.supervise")

HELP = "run `swapd serve`, keeping its descriptors across restarts (no systemd needed)"

EX_RESTART = 75  # the daemon's exit status after a requested restart (EX_TEMPFAIL)
EX_REFUSED = 78  # the daemon cannot read the stored state (EX_CONFIG): keep it, wait


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``swapd supervise``'s options; the rest after ``--`` goes to ``swapd serve``."""
    p.add_argument("--store-max", type=int, default=4096, metavar="N",
                   help="descriptors the store keeps (FileDescriptorStoreMax=; default 4096)")
    p.add_argument("--restart-sec", type=float, default=0.0, metavar="S",
                   help="pause before a restart (RestartSec=; default 0)")
    p.add_argument("--burst", type=int, default=20, metavar="N",
                   help="give up after N starts within 10 s (StartLimitBurst=; default 20)")
    p.add_argument("serve_args", nargs=argparse.REMAINDER,
                   help="options of `swapd serve`, after --")


def run(args: argparse.Namespace) -> int:
    """Supervise the daemon until SIGTERM/SIGINT; returns the exit status."""
    from swapd.errors import ConfigError
    from swapd.kernel.fdstore import ServiceManager

    if args.store_max < 1:
        raise ConfigError(f"--store-max must be >= 1, got {args.store_max}")
    serve = [a for a in args.serve_args if a != "--"] if args.serve_args[:1] == ["--"] \
        else list(args.serve_args)
    argv = [sys.executable, "-m", "swapd", "serve", *serve]
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    pending: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        pending.append(signum)

    old_fd = signal.set_wakeup_fd(wake_w)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    starts: list[float] = []
    try:
        with ServiceManager(argv, store_max=args.store_max) as m:
            while True:
                now = time.monotonic()
                starts = [t for t in starts if now - t < 10.0] + [now]
                if len(starts) > args.burst:
                    log.error("swapd serve started %d times within 10 s: giving up",
                              len(starts) - 1)
                    return 1
                m.start()
                stop = _watch(m, wake_r, pending)
                if stop:
                    status = m.stop(signal.SIGTERM)
                    log.warning("stopped (daemon exit status %s); fd store released", status)
                    return 0
                st = m.exit_status or 0
                if os.WIFEXITED(st) and os.WEXITSTATUS(st) == EX_REFUSED:
                    log.error("swapd serve refused the stored state (see its error); the "
                              "store is kept: send SIGHUP after installing a swapd that reads "
                              "it, SIGTERM to give up")
                    if _wait_for_hup(wake_r, pending):
                        return 1
                    starts.clear()
                    continue
                how = (f"exit status {os.waitstatus_to_exitcode(st)}"
                       if os.WIFEXITED(st) else f"signal {os.WTERMSIG(st)}")
                log.warning("swapd serve (%s) ended with %s; restarting with %d stored "
                            "descriptors", "restart requested" if os.WIFEXITED(st) and
                            os.WEXITSTATUS(st) == EX_RESTART else "unplanned", how,
                            len(m.store))
                if args.restart_sec > 0:
                    time.sleep(args.restart_sec)
    finally:
        signal.set_wakeup_fd(old_fd)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)


def _watch(m: object, wake_r: int, pending: list[int]) -> bool:
    """Serve the notify socket until the daemon exits (False) or a stop signal (True)."""
    from swapd.kernel.fdstore import ServiceManager

    assert isinstance(m, ServiceManager)
    while True:
        rl: list[int] = [m.sock.fileno(), wake_r] + ([m.pidfd] if m.pidfd >= 0 else [])
        with contextlib.suppress(InterruptedError):
            select.select(rl, [], [], 1.0)
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 64)
        m.dispatch(0)
        while pending:
            sig = pending.pop(0)
            if sig == signal.SIGHUP:
                m.signal(signal.SIGHUP)
            else:
                return True
        if not m.running():
            return False


def _wait_for_hup(wake_r: int, pending: list[int]) -> bool:
    """Wait for SIGHUP (False: try again) or SIGTERM/SIGINT (True: give up)."""
    while True:
        with contextlib.suppress(InterruptedError):
            select.select([wake_r], [], [], 1.0)
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 64)
        if pending:
            return pending.pop(0) != signal.SIGHUP
