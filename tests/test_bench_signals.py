"""``swapd bench``'s SIGTERM handling (swapd/cmd/bench.py).

SIGTERM exits a benchmark through its ``finally`` blocks (so its daemons, test hosts and files
go with it), but only in the benchmark's own process: a child forked without exec -- pyroute2's
namespace helpers are -- must die of the signal as by default, not unwind and run the parent's
clean-up (which deleted the test hosts of `swapd bench remote` under it).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from swapd.cmd import bench


def test_sigterm_unwinds_the_benchmark_and_kills_a_forked_child_by_default() -> None:
    seen: dict[str, object] = {}

    def body(args: argparse.Namespace) -> int:
        pid = os.fork()
        if pid == 0:  # the child: wait for the signal; unwinding would exit 143
            try:
                time.sleep(30)
            finally:
                os._exit(99)  # only reached if the handler raised in the child
        try:
            time.sleep(0.2)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            seen["child"] = status
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        finally:
            seen["finally"] = True
        return 0

    old = signal.getsignal(signal.SIGTERM)
    try:
        bench._terminable(body, argparse.Namespace())
    except SystemExit as exc:
        seen["exit"] = exc.code
    assert os.WIFSIGNALED(seen["child"]) and os.WTERMSIG(seen["child"]) == signal.SIGTERM
    assert seen["finally"] is True and seen["exit"] == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == old  # restored
