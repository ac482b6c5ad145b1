"""Mattson stack distances agree exactly with the policy-only LRU replay, and policy-only runs."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from swapd.plugins import available_policies
from swapd.sim.gen import generate
from swapd.sim.mattson import stack_distances
from swapd.sim.policy_only import run_policy_only


def _traces() -> dict[str, list[int]]:
    rng = random.Random(5)
    return {
        "zipf": [r.page for r in generate("zipf", 6000, seed=1, pages=800, alpha=0.9)],
        "scan": [r.page for r in generate("scan", 6000, seed=2, hot=100, cold=2000,
                                          scan_len=300, scan_every=700)],
        "shift": [r.page for r in generate("shift", 6000, seed=3, pages=3000, wss=200,
                                           period=900, step=70)],
        "loop": [r.page for r in generate("loop", 3000, pages=250)],
        "uniform": [rng.randrange(400) for _ in range(5000)],
        "tiny": [1, 2, 1, 3, 2, 1, 4, 4, 1],
    }


TRACES = _traces()


@pytest.mark.parametrize("name", sorted(TRACES))
def test_mattson_equals_lru_replay_at_every_capacity(name: str) -> None:
    keys = TRACES[name]
    sd = stack_distances(keys)
    distinct = len(set(keys))
    assert sd.distinct == distinct and sd.accesses == len(keys)
    caps = sorted({1, 2, 3, 7, distinct // 4 or 1, distinct // 2 or 1, distinct - 1 or 1,
                   distinct, distinct + 5, *random.Random(0).sample(range(1, distinct + 2),
                                                                    min(10, distinct))})
    curve = dict(sd.curve(caps))
    for c in caps:
        replay = run_policy_only(keys, "lru", c)
        assert replay.accesses == len(keys)
        assert curve[c] == replay.misses == sd.misses(c), (name, c)


def test_mattson_tiny_by_hand() -> None:
    sd = stack_distances([1, 2, 1, 3, 2, 1, 4, 4, 1])
    # distances: 1:inf 2:inf 1:2 3:inf 2:3 1:3 4:inf 4:1 1:2
    assert sd.cold_misses == 4
    assert sd.hist == (0, 1, 2, 2)
    assert [sd.misses(c) for c in (0, 1, 2, 3, 4)] == [9, 8, 6, 4, 4]


def test_mattson_matches_an_independent_ordereddict_lru() -> None:
    keys = TRACES["zipf"]
    sd = stack_distances(keys)
    for cap in (10, 100, 500):
        od: OrderedDict[int, None] = OrderedDict()
        misses = 0
        for k in keys:
            if k in od:
                od.move_to_end(k)
            else:
                misses += 1
                if len(od) >= cap:
                    od.popitem(last=False)
                od[k] = None
        assert sd.misses(cap) == misses


@pytest.mark.parametrize("policy", sorted(available_policies()))
def test_policy_only_counts_are_consistent(policy: str) -> None:
    keys = TRACES["scan"]
    r = run_policy_only(keys, policy, 150, window=1000)
    assert r.accesses == len(keys)
    assert len(set(keys)) <= r.misses <= len(keys)  # at least every cold miss
    assert r.hits + r.misses == r.accesses
    assert r.series[-1] == (r.accesses, r.misses)
    assert [a for a, _ in r.series] == list(range(1000, len(keys) + 1, 1000))
    # with room for every page, only cold misses remain
    assert run_policy_only(keys, policy, len(set(keys))).misses == len(set(keys))


def test_policy_only_is_deterministic() -> None:
    keys = TRACES["zipf"]
    assert run_policy_only(keys, "lru", 77).misses == run_policy_only(keys, "lru", 77).misses


def test_mattson_property_random_traces() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.lists(st.integers(0, 30), max_size=200), st.integers(1, 35))
    def check(keys: list[int], cap: int) -> None:
        assert stack_distances(keys).misses(cap) == run_policy_only(keys, "lru", cap).misses

    check()
