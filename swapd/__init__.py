"""swapd: a userspace swap daemon built on a generalized swap-LRU layer.

Package map (dependencies point down only):

* ``swapd.daemon`` -- sessions, the control protocol, the pager and reclaimer.
* ``swapd.sim`` -- replays traces through the same layer and policies.
* ``swapd.layer`` -- the swap table, one LRU above the tiers, admission.
* ``swapd.policy`` -- victim-selection policies (entry points ``swapd.policies``).
* ``swapd.backend`` -- the allocator contract (implementations in ``backends``,
  entry points ``swapd.backends``).
* ``swapd.kernel`` -- userfaultfd, memfd, pidfd, process_madvise, PAGEMAP_SCAN.
"""

__version__ = "0.1.0"
