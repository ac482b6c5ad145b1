"""swapd serve: run the swap daemon.

Serves the control socket (default: $RUNTIME_DIRECTORY/swapd.sock, else
/run/swapd/swapd.sock as root, else $XDG_RUNTIME_DIR/swapd/swapd.sock) with
the built-in defaults -- compressed tier zsmalloc+lz4, a disk tier file in the
state directory, the clock reclaim policy, the layer's LRU for demotion --
overridden by a TOML file: --config FILE (which must exist), else
$SWAPD_CONFIG, else /etc/swapd.toml as root when it exists (docs/config.md).
Before serving, every plugin name is resolved, the backend's options are
tried and the values are checked against the machine (swapd.config's stage
3); a problem stops the start with one line naming it.  SIGHUP reloads the
file (keys marked live are applied, a change of any other key refuses the
reload by name).  Under systemd (Type=notify) it sends READY=1 once the
socket is served, STATUS= on changes and WATCHDOG=1.
SIGTERM/SIGINT stop it.  Under a service manager with a file descriptor store
(systemd with ``FileDescriptorStoreMax=``, or ``swapd supervise``) a stop hands
every client over to the next daemon, which adopts them from ``LISTEN_FDS``
(docs/design.md, "Restart and crash recovery"); without one, clients then fail
closed (DaemonGoneError).  Exit status 75 after ``swapd ctl restart``, 78 when
the stored state is in a format this version cannot read.  SIGUSR1 dumps every
thread's stack to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time

from swapd import config as C

log = logging.getLogger("swapd.serve")

HELP = "run the swap daemon"
LOG_LEVEL = logging.INFO  # startup and shutdown are narrated at INFO


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``swapd serve``'s options (socket, config, state dir, record, check)."""
    p.add_argument("--socket", metavar="PATH", help="control socket path")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (default: "
                   "$SWAPD_CONFIG, else /etc/swapd.toml as root, when it exists)")
    p.add_argument("--state-dir", metavar="DIR", help="directory of the disk tier file")
    p.add_argument("--record", metavar="FILE",
                   help="write handled faults and evictions as a CSV trace (time,page,op,size)")
    p.add_argument("--check", action="store_true",
                   help="run every invariant check once a second (debug)")


def run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status (0)."""
    marks = [("interpreter and command line", time.monotonic())]
    import faulthandler
    import signal

    from swapd.daemon.handover import HandoverFormatError
    from swapd.daemon.restart import EX_REFUSED
    from swapd.daemon.server import Daemon, install_signal_handlers
    from swapd.kernel.sdnotify import notify

    marks.append(("daemon imports", time.monotonic()))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: dump stacks
    cfg = effective_config(args)
    for warning in C.check_startup(cfg):
        log.warning("%s", warning)
    C.raise_nofile(cfg)
    log.info("%s", startup_summary(cfg))
    marks.append(("configuration", time.monotonic()))
    daemon = Daemon(cfg, socket_path=args.socket, state_dir=args.state_dir, notify=notify)
    with contextlib.ExitStack() as stack:
        stack.callback(daemon.close)
        try:
            daemon.start(marks)
        except HandoverFormatError as exc:
            print(f"error: the stored state cannot be adopted: {exc}; the descriptors stay "
                  "in the fd store for a swapd that can read them", file=sys.stderr)
            return EX_REFUSED
        install_signal_handlers(daemon)
        log.info("swapd %s serving %s (pid %d; %s)", _version(), daemon.socket_path,
                 os.getpid(), _since_exec(marks))
        daemon.serve_forever()
        log.info("swapd stopping: %d client(s) connected", len(daemon.sessions))
    log.info("swapd stopped (exit status %d)", daemon.exit_status)
    if daemon.keeper.handed_over:
        # the next daemon waits for this process to exit: skip the interpreter's teardown
        # (freeing every object, joining nothing that still runs); what is buffered is
        # flushed first
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(daemon.exit_status)
    return daemon.exit_status


def _since_exec(marks: list[tuple[str, float]]) -> str:
    """How long this process took to start serving, and in what: since its start
    (``/proc/self/stat`` field 22, clock ticks since boot; 10 ms resolution) to each of
    ``marks`` (``(what was done, time.monotonic() when done)``) -- a restarted daemon's
    clients wait that long."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return "start time unknown"
    t = now - age
    parts = []
    for what, at in marks:
        parts.append(f"{what} {max(0.0, at - t) * 1000:.0f}")
        t = at
    return (f"serving {age * 1000:.0f} ms after the process started: "
            + ", ".join(parts) + " ms")


def _version() -> str:
    from swapd import __version__

    return __version__


def effective_config(args: argparse.Namespace) -> C.Config:
    """The file (or the default file) with the command line's overrides, each with its source."""
    cfg = C.load_config(args.config, default_file=True)
    if args.socket:
        cfg = C.replace(cfg, "daemon", source="--socket", socket=args.socket)
    if args.state_dir:
        cfg = C.replace(cfg, "daemon", source="--state-dir", state_dir=args.state_dir)
    if args.record:
        cfg = C.replace(cfg, "daemon", source="--record", record=args.record)
    if args.check:
        cfg = C.replace(cfg, "daemon", source="--check", check_invariants=True)
    return cfg


def startup_summary(cfg: C.Config) -> str:
    """One line of what is configured: file, tiers, policies, limits, and changed keys."""
    lay, lim = cfg.layer, cfg.limits
    pool = (C.format_size(lay.pool_limit_bytes) if lay.pool_limit_bytes is not None
            else f"{lay.pool_limit_percent:g}% of RAM")
    backend_opts = cfg.backend_options()
    changed = sorted(cfg.sources)
    return (f"swapd {_version()} starting: config {cfg.path or 'built-in defaults'}; "
            f"compressed tier {lay.backend}"
            + (f" {backend_opts}" if backend_opts else "")
            + f" + {lay.compressor}, pool limit {pool}, accept "
            f"{lay.accept_threshold_percent:g}%; disk tier "
            + (f"{C.format_size(lay.disk_bytes)}" if lay.disk else "off")
            + f"; reclaim {cfg.reclaim.policy}, demotion {lay.demotion_policy}; "
            f"limits {lim.max_clients} clients x {lim.max_regions} regions, default resident "
            f"{C.format_size(lim.default_resident_bytes)}, global "
            f"{C.format_size(lim.global_resident_bytes)}"
            + (f"; set: {', '.join(changed)}" if changed else ""))
