# mypy: disable-error-code="untyped-decorator"
"""The victim-selection policy contract suite, shipped with swapd (``swapd.testing``).

Run against any installed policy, without a swapd source tree::

    pytest --swapd-policy NAME                 # a policy registered in swapd.policies
    pytest --swapd-policy NAME:param=value     # with parameters
    pytest --swapd-policy pkg.mod:Class        # a class that is not registered (yet)

Every test calls ``_check()`` after each operation.  Randomized tests draw everything
from ``random.Random(seed)``; a failure message carries the seed.  The stateful test
needs ``hypothesis`` (skipped without it).  docs/writing-a-policy.md walks through it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from swapd.errors import AlreadyTrackedError, ConfigError
from swapd.policy import Policy

Factory = Callable[[int | None], Policy]


def test_name_and_description(swapd_policy: Factory) -> None:
    """The contract: name and description."""
    factory = swapd_policy
    p = factory(None)
    assert isinstance(p, Policy)
    assert isinstance(p.name, str) and p.name
    assert p.description


def test_bad_parameters_are_config_errors(swapd_policy: Factory) -> None:
    """The contract: bad parameters are config errors."""
    factory = swapd_policy
    cls = type(factory(None))
    with pytest.raises(ConfigError):
        cls(8, no_such_parameter=1)
    with pytest.raises(ConfigError):
        cls(0)


def test_insert_contains_len(swapd_policy: Factory) -> None:
    """The contract: insert contains len."""
    factory = swapd_policy
    p = factory(None)
    assert len(p) == 0 and 1 not in p
    for k in range(10):
        p.insert(k)
        p._check()
        assert k in p and len(p) == k + 1
    with pytest.raises(AlreadyTrackedError):
        p.insert(3)
    with pytest.raises(KeyError):  # AlreadyTrackedError is a KeyError too
        p.insert(9)
    assert len(p) == 10
    p._check()


def test_access_and_remove_of_untracked_keys_raise(swapd_policy: Factory) -> None:
    """The contract: access and remove of untracked keys raise."""
    factory = swapd_policy
    p = factory(None)
    for k in range(4):
        p.insert(k)
    with pytest.raises(KeyError):
        p.access(99)
    with pytest.raises(KeyError):
        p.remove(99)
    p.remove(2)
    p._check()
    assert 2 not in p and len(p) == 3
    with pytest.raises(KeyError):
        p.remove(2)
    with pytest.raises(KeyError):
        p.access(2)
    p.access(1)
    p._check()
    assert len(p) == 3


def test_victims_are_unique_tracked_and_untracked_after(swapd_policy: Factory) -> None:
    """The contract: victims are unique tracked and untracked after."""
    factory = swapd_policy
    p = factory(None)
    keys = list(range(50))
    for k in keys:
        p.insert(k)
    for k in keys[::3]:
        p.access(k)
    assert p.victims(0) == []
    got = p.victims(7)
    p._check()
    assert len(got) == 7 and len(set(got)) == 7 and set(got) <= set(keys)
    assert all(k not in p for k in got) and len(p) == 43
    rest = p.victims(1000)  # more than tracked: all of them
    p._check()
    assert len(got + rest) == len(keys) and set(got + rest) == set(keys) and len(p) == 0
    assert p.victims(3) == []


def test_victims_after_removes(swapd_policy: Factory) -> None:
    """The daemon removes pages that fault in; victims must skip them."""
    factory = swapd_policy
    p = factory(None)
    for k in range(100):
        p.insert(k)
    for k in range(0, 100, 5):
        p.access(k)
    p.victims(10)
    for k in range(100):
        if k % 2 == 0 and k in p:
            p.remove(k)
            p._check()
    remaining = {k for k in range(100) if k in p}
    got = p.victims(1000)
    p._check()
    assert len(got) == len(set(got)) and set(got) == remaining
    assert all(isinstance(k, int) and k % 2 for k in got)


def test_evicted_keys_are_not_tracked_even_if_remembered(swapd_policy: Factory) -> None:
    """Ghost entries (ARC, 2Q, S3-FIFO) are history, not tracked keys."""
    factory = swapd_policy
    p = factory(8)
    for k in range(40):
        p.request(k)
        if k % 3 == 0:
            p.request(k)
    gone = [k for k in range(40) if k not in p]
    assert gone
    for k in gone:
        with pytest.raises(KeyError):
            p.remove(k)
        with pytest.raises(KeyError):
            p.access(k)
    p._check()
    p.insert(gone[-1])  # a remembered key can be inserted again
    p._check()
    assert gone[-1] in p


def test_unbounded_policy_never_evicts_on_its_own(swapd_policy: Factory) -> None:
    """The contract: unbounded policy never evicts on its own."""
    factory = swapd_policy
    p = factory(None)
    rng = random.Random(11)
    keys = [rng.randrange(300) for _ in range(2000)]
    misses = p.replay(keys)
    p._check()
    assert misses == len(set(keys)) == len(p)


def test_request_never_exceeds_capacity_and_reports_hits(swapd_policy: Factory) -> None:
    """The contract: request never exceeds capacity and reports hits."""
    factory = swapd_policy
    rng = random.Random(5)
    for cap in (1, 2, 7, 32):
        p = factory(cap)
        for _ in range(600):
            k = rng.randrange(3 * cap + 2)
            was = k in p
            assert p.request(k) is was
            assert k in p and len(p) <= cap
            p._check()


def _drain(p: Policy) -> list[Any]:
    out = p.victims(len(p))
    p._check()
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_request_and_replay_match_the_default_implementation(swapd_policy: Factory,
                                                             seed: int) -> None:
    """The contract: request and replay match the default implementation."""
    factory = swapd_policy
    rng = random.Random(seed)
    cap = rng.choice([3, 10, 25])
    keys = [int(rng.paretovariate(1.0)) % 80 for _ in range(1500)]
    fast, slow = factory(cap), factory(cap)
    for i, k in enumerate(keys):
        a = fast.request(k)
        b = Policy.request(slow, k)
        assert a == b, f"seed {seed}: request #{i} ({k!r}) differs"
    fast._check()
    slow._check()
    assert len(fast) == len(slow)
    assert _drain(fast) == _drain(slow), f"seed {seed}: final eviction orders differ"

    rep, ref = factory(cap), factory(cap)
    misses = rep.replay(keys)
    expected = sum(1 for k in keys if not Policy.request(ref, k))
    assert misses == expected, f"seed {seed}: replay misses {misses} != {expected}"
    rep._check()
    assert _drain(rep) == _drain(ref), f"seed {seed}: replay left a different state"


def test_replay_after_resize_down_evicts_like_request(swapd_policy: Factory) -> None:
    """The contract: replay after resize down evicts like request."""
    factory = swapd_policy
    rng = random.Random(9)
    keys = [rng.randrange(60) for _ in range(400)]
    a, b = factory(40), factory(40)
    a.replay(keys)
    b.replay(keys)
    a.resize(10)
    b.resize(10)
    more = [rng.randrange(60) for _ in range(300)]
    assert a.replay(more) == sum(1 for k in more if not Policy.request(b, k))
    a._check()
    assert len(a) <= 10 and _drain(a) == _drain(b)


def _stress(factory: Factory, seed: int, steps: int) -> None:
    """Weighted random operations against a shadow set of tracked keys."""
    rng = random.Random(seed)
    cap = rng.choice([None, 1, 4, 16])
    p = factory(cap)
    tracked: set[int] = set()
    universe = rng.choice([8, 40, 200])
    ops = ["insert", "access", "remove", "victims", "request", "resize"]
    weights = [30, 25, 10, 10, 30, 2]
    for step in range(steps):
        op = rng.choices(ops, weights)[0]
        k = rng.randrange(universe)
        where = f"seed {seed} step {step} op {op} key {k}"
        if op == "insert":
            if k in tracked:
                with pytest.raises(AlreadyTrackedError):
                    p.insert(k)
            else:
                p.insert(k)
                tracked.add(k)
        elif op == "access":
            if k in tracked:
                p.access(k)
            else:
                with pytest.raises(KeyError):
                    p.access(k)
        elif op == "remove":
            if k in tracked:
                p.remove(k)
                tracked.discard(k)
            else:
                with pytest.raises(KeyError):
                    p.remove(k)
        elif op == "victims":
            n = rng.randrange(0, 6)
            got = p.victims(n)
            assert len(got) == min(n, len(tracked)), where
            assert len(set(got)) == len(got) and set(got) <= tracked, where
            tracked -= set(got)
        elif op == "request":
            hit = p.request(k)
            assert hit is (k in tracked), where
            after = {x for x in tracked | {k} if x in p}
            assert k in after, where
            if hit:  # a hit evicts nothing, even above capacity (after insert/resize)
                assert after == tracked, where
            elif p.capacity is not None:
                assert len(after) <= p.capacity, where
            tracked = after
        else:
            p.resize(rng.choice([None, 2, 8, 32]))
        p._check()
        assert len(p) == len(tracked), where
        assert all(x in p for x in tracked), where
    assert set(_drain(p)) == tracked


@pytest.mark.parametrize("seed", range(6))
def test_seeded_random_operations(swapd_policy: Factory, seed: int) -> None:
    """The contract: seeded random operations."""
    factory = swapd_policy
    _stress(factory, seed, 400)


def test_seeded_stress_is_replayable(swapd_policy: Factory) -> None:
    """The same seed gives the same decisions (no hidden randomness or hashing order)."""
    factory = swapd_policy

    def run(seed: int) -> list[Any]:
        rng = random.Random(seed)
        p = factory(12)
        log: list[Any] = []
        for _ in range(500):
            k = (rng.randrange(50), "page")  # tuple keys, as the daemon uses
            log.append(p.request(k))
            if rng.random() < 0.05:
                log.append(p.victims(rng.randrange(4)))
        log.append(_drain(p))
        return log

    assert run(42) == run(42)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 140))
def test_seeded_random_operations_long(swapd_policy: Factory, seed: int) -> None:
    """The contract: seeded random operations long."""
    factory = swapd_policy
    _stress(factory, seed, 5000)


def _machine(factory: Factory) -> Any:
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        initialize,
        invariant,
        precondition,
        rule,
    )

    keys = st.integers(min_value=0, max_value=12)

    class PolicyMachine(RuleBasedStateMachine):  # type: ignore[misc]
        """Random operation sequences; shrinks to a minimal failing one."""

        def __init__(self) -> None:
            super().__init__()
            self.p: Policy = factory(None)
            self.tracked: set[int] = set()

        @initialize(cap=st.sampled_from([None, 1, 3, 6]))
        def make(self, cap: int | None) -> None:
            self.p = factory(cap)

        @rule(k=keys)
        def insert(self, k: int) -> None:
            if k in self.tracked:
                with pytest.raises(AlreadyTrackedError):
                    self.p.insert(k)
            else:
                self.p.insert(k)
                self.tracked.add(k)

        @rule(k=keys)
        def access(self, k: int) -> None:
            if k in self.tracked:
                self.p.access(k)
            else:
                with pytest.raises(KeyError):
                    self.p.access(k)

        @rule(k=keys)
        def remove(self, k: int) -> None:
            if k in self.tracked:
                self.p.remove(k)
                self.tracked.discard(k)
            else:
                with pytest.raises(KeyError):
                    self.p.remove(k)

        @precondition(lambda self: len(self.tracked) > 0)
        @rule(n=st.integers(min_value=0, max_value=4))
        def victims(self, n: int) -> None:
            got = self.p.victims(n)
            assert len(got) == min(n, len(self.tracked))
            assert len(set(got)) == len(got) and set(got) <= self.tracked
            self.tracked -= set(got)

        @rule(k=keys)
        def request(self, k: int) -> None:
            hit = self.p.request(k)
            assert hit is (k in self.tracked)
            after = {x for x in self.tracked | {k} if x in self.p}
            assert k in after
            if hit:
                assert after == self.tracked
            elif self.p.capacity is not None:
                assert len(after) <= self.p.capacity
            self.tracked = after

        @invariant()
        def consistent(self) -> None:
            self.p._check()
            assert len(self.p) == len(self.tracked)
            assert all(x in self.p for x in self.tracked)

    return PolicyMachine


def test_hypothesis_stateful(swapd_policy: Factory) -> None:
    """The contract: hypothesis stateful."""
    pytest.importorskip("hypothesis", reason="the stateful test needs hypothesis")
    factory = swapd_policy
    from hypothesis import HealthCheck, settings
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        _machine(factory),
        settings=settings(max_examples=40, stateful_step_count=30, deadline=None,
                          derandomize=True, suppress_health_check=list(HealthCheck)),
    )


__all__ = [n for n in list(globals()) if n.startswith("test_")]
