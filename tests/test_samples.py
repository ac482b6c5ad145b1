"""The fault-latency sample ring of each session (swapd/daemon/session.py, SampleRing)."""

from __future__ import annotations

import sys

import pytest

from swapd.daemon.session import LatencySummary, SampleRing


def test_ring_keeps_the_last_maxlen_samples_oldest_first() -> None:
    r = SampleRing(5)
    assert list(r) == [] and len(r) == 0
    for v in range(3):
        r.append(v)
    assert list(r) == [0, 1, 2]
    for v in range(3, 12):
        r.append(v)
    assert len(r) == 5
    assert list(r) == [7, 8, 9, 10, 11]
    assert LatencySummary.of(list(r)).count == 5


def test_ring_costs_eight_bytes_a_sample() -> None:
    r = SampleRing(65536)
    for v in range(65536):
        r.append(1_000_000 + v)  # beyond the small ints Python caches
    assert sys.getsizeof(r._a) < 65536 * 8 * 1.2


def test_ring_refuses_an_empty_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SampleRing(0)
