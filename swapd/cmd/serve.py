"""swapd serve: run the swap daemon.

Serves the control socket (default: $RUNTIME_DIRECTORY/swapd.sock, else
/run/swapd/swapd.sock as root, else $XDG_RUNTIME_DIR/swapd/swapd.sock) with
the built-in defaults -- compressed tier zsmalloc+lz4, a disk tier file in the
state directory, the clock reclaim policy, the layer's LRU for demotion --
overridden by a TOML file (--config).  Under systemd (Type=notify) it sends
READY=1 once the socket is served, STATUS= on changes and WATCHDOG=1.
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
import sys

from swapd.config import load_config, replace

log = logging.getLogger("swapd.serve")

HELP = "run the swap daemon"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``swapd serve``'s options (socket, config, state dir, record, check)."""
    p.add_argument("--socket", metavar="PATH", help="control socket path")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--state-dir", metavar="DIR", help="directory of the disk tier file")
    p.add_argument("--record", metavar="FILE",
                   help="write handled faults and evictions as a CSV trace (time,page,op,size)")
    p.add_argument("--check", action="store_true",
                   help="run every invariant check once a second (debug)")


def run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status (0)."""
    import faulthandler
    import signal

    from swapd.daemon.handover import HandoverFormatError
    from swapd.daemon.restart import EX_REFUSED
    from swapd.daemon.server import Daemon, install_signal_handlers
    from swapd.kernel.sdnotify import notify

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: dump stacks
    cfg = load_config(args.config)
    if args.record:
        cfg = replace(cfg, "daemon", record=args.record)
    if args.check:
        cfg = replace(cfg, "daemon", check_invariants=True)
    daemon = Daemon(cfg, socket_path=args.socket, state_dir=args.state_dir, notify=notify)
    with contextlib.ExitStack() as stack:
        stack.callback(daemon.close)
        try:
            daemon.start()
        except HandoverFormatError as exc:
            print(f"error: the stored state cannot be adopted: {exc}; the descriptors stay "
                  "in the fd store for a swapd that can read them", file=sys.stderr)
            return EX_REFUSED
        install_signal_handlers(daemon)
        log.warning("swapd serving %s", daemon.socket_path)
        daemon.serve_forever()
    return daemon.exit_status
