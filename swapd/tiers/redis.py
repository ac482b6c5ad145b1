# The remote tier: pages on Redis (standalone or Redis Cluster), the slowest tier of the chain.
#
# Design.  A page demoted here travels compressed (lz4) with a CRC-32 of the whole page, under
# the key ``swapd:<namespace>:<id>`` where <namespace> names the daemon instance (so instances
# sharing a store never collide, and a restarted instance finds its own keys) and <id> is the
# integer key the layer keeps in its swap-table word.  The value is
#
#     b"SWP1" | u32 crc32(page) little-endian | u8 codec (0 raw, 1 lz4 block) | payload
#
# and a load checks the magic, decompresses and checks the CRC: a value that fails is
# CorruptPageError (the daemon poisons that access), never data.
#
# Writeback is pipelined: one round trip per node for a batch of SETs, and the batch ends with
# ``WAIT numreplicas timeout`` on the same connection (WAIT counts the replicas that acknowledged
# every earlier write of *that* connection -- redis/src/replication.c: waitCommand), so the layer
# drops its faster copy only after ``replicas`` replicas hold the page too: a primary's failure
# loses nothing.  Fewer acknowledgements than asked fail the batch (TierIOError) and the layer
# keeps the pages where they were.  On Redis Cluster the batch is split by the node that owns
# each key's slot (one pipeline + WAIT per node).
#
# Readahead fetches a run with one pipelined round trip (``load_batch``).  ``free`` only queues
# the id; queued ids are deleted (UNLINK) in one pipeline with the next store or when the queue
# is long, and an id is reused only after its delete went out on that same connection ahead of
# any new SET of it, so a late delete can never remove a newer page.
#
# When the store cannot be reached, ``available()`` turns False and stays so until a PING
# succeeds (probed at most every ``probe_interval_s``): the layer then demotes nothing here and
# admission falls back to the faster tiers.  A load of a page whose only copy is here retries
# with exponential back-off (10 ms doubling to 0.5 s) for ``retry_s`` seconds, refreshing the
# cluster's slot map between tries (a failover moves slots), and then fails with TierIOError:
# the daemon poisons that access and counts it; it is never answered with zeros.
#
# State.  The id table (id -> bytes stored, 0 = not in use) is a state region (swapd/state,
# kind "redis-ids", docs/state-format.md), so a restarted daemon adopts it with the swap table:
# an id in use keeps its value in Redis; every id below the high-water mark that is not in use
# may still have a value there (a delete not yet sent), so an adopted tier deletes those before
# it reuses them; and ids in use that no swap-table word references (a crash between the SET and
# the table's commit) are released by ``reconcile``.
#
# Invariants (``_check``): ids in use, free and queued for deletion are disjoint; used bytes is
# the sum of the sizes of the ids in use.
# Lock order: ``RedisTier._lock`` is a leaf (taken for id bookkeeping, never across a round trip).
"""The Redis tier (entry point ``redis`` of ``swapd.tiers``)."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lz4.block

from swapd.errors import ConfigError, CorruptPageError, InvariantError, TierFullError, TierIOError
from swapd.layer.table import EntryState
from swapd.layer.tier import Tier, TierContext, _options
from swapd.pages import PAGE_SIZE
from swapd.state import ArraySpec, StateFormatError, StateRegion

__all__ = ["RedisTier"]

_MAGIC = b"SWP1"
_HEAD = struct.Struct("<4sIB")  # magic, crc32 of the page, codec
_RAW, _LZ4 = 0, 1
_FREE_FLUSH = 256  # queued deletes that force a round trip of their own
IDS_KIND = "redis-ids"
IDS_KIND_VERSION = 1
MAX_IDS = 1 << 28  # reserved, not allocated: 1 GiB of address space for 4-byte records
_NS_SCALARS = ["ns0", "ns1", "ns2", "ns3"]  # the namespace, 8 ASCII bytes each


def _pack_ns(namespace: str) -> list[int]:
    raw = namespace.encode().ljust(32, b"\0")
    return [int.from_bytes(raw[i:i + 8], "little") for i in range(0, 32, 8)]


def _unpack_ns(region: StateRegion) -> str:
    raw = b"".join(region.get(n).to_bytes(8, "little") for n in _NS_SCALARS)
    return raw.rstrip(b"\0").decode("ascii", "replace")


def encode_page(page: bytes) -> bytes:
    """The stored value of ``page`` (see the module comment)."""
    crc = zlib.crc32(page)
    c: bytes = lz4.block.compress(page, store_size=False)
    if len(c) < PAGE_SIZE:
        return _HEAD.pack(_MAGIC, crc, _LZ4) + c
    return _HEAD.pack(_MAGIC, crc, _RAW) + bytes(page)


def decode_page(value: bytes | None, what: str) -> bytes:
    """The page of a stored value; CorruptPageError when it is missing or fails its check."""
    if value is None:
        raise CorruptPageError(f"{what}: the remote copy is missing")
    if len(value) < _HEAD.size:
        raise CorruptPageError(f"{what}: remote value of {len(value)} bytes is truncated")
    magic, crc, codec = _HEAD.unpack_from(value)
    if magic != _MAGIC:
        raise CorruptPageError(f"{what}: remote value has no swapd header")
    body = value[_HEAD.size:]
    if codec == _RAW:
        page = bytes(body)
    elif codec == _LZ4:
        try:
            page = lz4.block.decompress(body, uncompressed_size=PAGE_SIZE)
        except Exception as exc:
            raise CorruptPageError(f"{what}: remote value does not decompress: {exc}") from exc
    else:
        raise CorruptPageError(f"{what}: unknown codec {codec}")
    if len(page) != PAGE_SIZE or zlib.crc32(page) != crc:
        raise CorruptPageError(f"{what}: remote value fails its checksum")
    return page


class RedisTier(Tier):
    """Compressed, checksummed pages on Redis (see the module comment).

    ``url`` is ``redis://HOST:PORT[/DB]``; with ``cluster`` it is one node of a Redis Cluster
    (the others are discovered).  ``replicas``: replicas that must acknowledge a batch (WAIT)
    before the layer drops its copy; ``wait_timeout_ms`` bounds that wait.  ``timeout_s`` is
    the socket timeout of one round trip, ``retry_s`` how long a load keeps retrying before it
    fails.  ``capacity_bytes`` (optional) bounds what this instance keeps there.
    """

    state = EntryState.REMOTE
    slow = True
    name = "redis"
    state_name = "redis"
    description = "compressed, checksummed pages on Redis or Redis Cluster (remote tier)"

    def __init__(self, url: str, *, namespace: str = "swapd", cluster: bool = False,
                 replicas: int = 0, wait_timeout_ms: int = 1000, timeout_s: float = 1.0,
                 retry_s: float = 5.0, probe_interval_s: float = 0.5,
                 capacity_bytes: int | None = None, keep: bool = False,
                 region: StateRegion | None = None) -> None:
        import redis

        if replicas < 0 or wait_timeout_ms < 0 or timeout_s <= 0 or retry_s < 0:
            raise ConfigError("[tier.redis] replicas, wait_timeout_ms and retry_s must be >= 0, "
                              "timeout_s > 0")
        if (not namespace or len(namespace) > 32 or not namespace.isascii()
                or any(c in namespace for c in " \t\n{}")):
            raise ConfigError(f"[tier.redis] namespace {namespace!r}: up to 32 ASCII "
                              "characters, no spaces or braces")
        self.url = url
        self.namespace = namespace
        self.cluster = cluster
        self.replicas = replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.retry_s = retry_s
        self.probe_interval_s = probe_interval_s
        self._capacity = capacity_bytes
        self._keep = keep
        self._prefix = f"swapd:{namespace}:".encode()
        self._errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
            redis.exceptions.ResponseError, OSError)
        # a WAIT may block for wait_timeout_ms: the socket must outwait it
        kw: dict[str, Any] = {"socket_timeout": timeout_s + wait_timeout_ms / 1000,
                              "socket_connect_timeout": timeout_s}
        try:
            if cluster:
                from redis.cluster import RedisCluster

                self._r: Any = RedisCluster.from_url(url, **kw)
            else:
                self._r = redis.Redis.from_url(url, **kw)
        except (ValueError, *self._errors) as exc:
            raise ConfigError(f"[tier.redis] cannot use {url!r}: {exc}") from exc
        self._lock = threading.Lock()
        if region is None:
            region = StateRegion.create(IDS_KIND, IDS_KIND_VERSION,
                                        [ArraySpec("ids", "I", MAX_IDS)], _NS_SCALARS)
            for name, v in zip(_NS_SCALARS, _pack_ns(namespace)):
                region.set(name, v)
        elif _unpack_ns(region) != namespace:
            raise StateFormatError(f"redis tier: the id table is namespace "
                                   f"{_unpack_ns(region)!r}, not {namespace!r}")
        self.region = region
        self._sizes = region.view("ids")  # under _lock: id -> stored bytes (0: not in use)
        self._top = region.count("ids")   # under _lock: ids ever handed out (high-water mark)
        self._free: list[int] = []      # under _lock: ids that may be reused
        self._doomed: list[int] = []    # under _lock: freed ids whose delete is not sent yet
        self._used = 0                  # under _lock: bytes in use
        self._in_use = 0                # under _lock: ids in use
        for i in range(self._top):      # an adopted table (see the module comment)
            size = self._sizes[i]
            if size:
                self._used += size
                self._in_use += 1
            else:
                self._doomed.append(i)
        self._up = True                 # under _lock
        self._next_probe = 0.0          # under _lock
        self.round_trips = 0            # under _lock
        self.retries = 0                # under _lock
        self.errors = 0                 # under _lock
        self.wait_failures = 0          # under _lock

    @classmethod
    def from_config(cls, ctx: TierContext, options: Mapping[str, Any]) -> RedisTier:
        """Options: ``url`` (required), ``cluster``, ``namespace`` (default: the instance),
        ``replicas``, ``wait_timeout_ms``, ``timeout_s``, ``retry_s``, ``probe_interval_s``,
        ``capacity_bytes``."""
        num = (int, float)
        opts = _options("redis", options, {
            "url": str, "cluster": bool, "namespace": str, "replicas": int,
            "wait_timeout_ms": int, "timeout_s": num, "retry_s": num,
            "probe_interval_s": num, "capacity_bytes": int})
        if "url" not in opts:
            raise ConfigError("[tier.redis] url: required (redis://HOST:PORT)")
        url = opts.pop("url")
        opts.setdefault("namespace", ctx.instance)
        return cls(url, **opts)

    # -- helpers ----------------------------------------------------------------------------

    def _key(self, i: int) -> bytes:
        return self._prefix + str(i).encode()

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self._up = False
            self._next_probe = time.monotonic() + self.probe_interval_s

    def _take_ids(self, n: int) -> tuple[list[int], list[int]]:
        """``n`` ids for new values and the ids whose delete must go out first (under _lock)."""
        doomed, self._doomed = self._doomed, []
        ids: list[int] = []
        while len(ids) < n and self._free:
            ids.append(self._free.pop())
        if len(ids) < n:
            top = self._top + n - len(ids)
            if top > MAX_IDS:
                raise TierFullError(f"redis tier {self.url}: all {MAX_IDS} ids in use")
            self.region.set_count("ids", top)
            ids.extend(range(self._top, top))
            self._top = top
        return ids, doomed

    def _node_groups(self, keys: Sequence[bytes]) -> list[tuple[Any, list[int]]]:
        """(client of one node, indexes of ``keys`` it owns); one group when standalone."""
        if not self.cluster:
            return [(self._r, list(range(len(keys))))]
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, k in enumerate(keys):
            node = self._r.get_node_from_key(k)
            g = groups.get(node.name)
            if g is None:
                g = groups[node.name] = (self._r.get_redis_connection(node), [])
            g[1].append(i)
        return list(groups.values())

    def _refresh(self) -> None:
        if self.cluster:
            try:
                self._r.nodes_manager.initialize()
            except self._errors:
                pass

    # -- the Tier contract -----------------------------------------------------------------

    def available(self) -> bool:
        with self._lock:
            if self._up:
                return True
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + self.probe_interval_s
        try:
            self._refresh()
            self._r.ping()
        except self._errors:
            return False
        with self._lock:
            self._up = True
        return True

    def store_batch(self, pages: Sequence[bytes]) -> list[int]:
        """SET every page (one pipeline and one WAIT per node), then return their ids.

        All or nothing: TierIOError when a node cannot be reached or fewer than ``replicas``
        replicas acknowledged; TierFullError beyond ``capacity_bytes`` (or a prefix that fits).
        """
        if not pages:
            return []
        values = [encode_page(bytes(p)) for p in pages]
        with self._lock:
            if self._capacity is not None:
                room = self._capacity - self._used
                n = 0
                while n < len(values) and room >= len(values[n]):
                    room -= len(values[n])
                    n += 1
                if n == 0:
                    raise TierFullError(f"redis tier {self.url}: {self._used} of "
                                        f"{self._capacity} bytes in use")
                values = values[:n]
            ids, doomed = self._take_ids(len(values))
            # reserve the sizes now, so used_bytes() counts in-flight stores
            for i, v in zip(ids, values):
                self._sizes[i] = len(v)
            self._used += sum(len(v) for v in values)
            self._in_use += len(ids)
        keys = [self._key(i) for i in ids]
        dkeys = [self._key(i) for i in doomed]
        try:
            self._send_deletes(dkeys)
            for client, idx in self._node_groups(keys):
                pipe = client.pipeline(transaction=False)
                for j in idx:
                    pipe.set(keys[j], values[j])
                if self.replicas:
                    pipe.execute_command("WAIT", self.replicas, self.wait_timeout_ms)
                res = pipe.execute()
                with self._lock:
                    self.round_trips += 1
                if self.replicas and int(res[-1]) < self.replicas:
                    with self._lock:
                        self.wait_failures += 1
                    raise TierIOError(0, f"redis tier {self.url}: {res[-1]} of {self.replicas} "
                                         "replicas acknowledged the batch")
        except TierIOError:
            self._unreserve(ids, doomed)
            raise
        except self._errors as exc:
            self._failed(exc)
            self._unreserve(ids, doomed)
            raise TierIOError(0, f"redis tier {self.url}: store failed: {exc}") from exc
        return ids

    def _unreserve(self, ids: list[int], doomed: list[int]) -> None:
        """Undo a failed store: its ids (possibly written) and the unsent deletes go back to
        the delete queue, so nothing is reused before a delete of it went out."""
        with self._lock:
            for i in ids:
                self._used -= self._sizes[i]
                self._sizes[i] = 0
            self._in_use -= len(ids)
            self._doomed.extend(doomed)
            self._doomed.extend(ids)

    def _send_deletes(self, dkeys: list[bytes]) -> None:
        if not dkeys:
            return
        for client, idx in self._node_groups(dkeys):
            pipe = client.pipeline(transaction=False)
            for j in idx:
                pipe.unlink(dkeys[j])
            pipe.execute()
            with self._lock:
                self.round_trips += 1
        with self._lock:
            self._free.extend(int(k[len(self._prefix):]) for k in dkeys)

    def load(self, key: int) -> bytes:
        return self.load_batch([key])[0]

    def load_batch(self, keys: Sequence[int]) -> list[bytes]:
        """GET every key in one pipelined round trip (retried with back-off for ``retry_s``)."""
        if not keys:
            return []
        names = [self._key(k) for k in keys]
        deadline = time.monotonic() + self.retry_s
        delay = 0.01
        while True:
            try:
                pipe = self._r.pipeline(transaction=False)
                for n in names:
                    pipe.get(n)
                values = pipe.execute()
                with self._lock:
                    self.round_trips += 1
                    if not self._up:
                        self._up = True
                break
            except self._errors as exc:
                self._failed(exc)
                if time.monotonic() + delay > deadline:
                    raise TierIOError(0, f"redis tier {self.url}: load of {len(keys)} page(s) "
                                         f"failed for {self.retry_s:g} s: {exc}") from exc
                with self._lock:
                    self.retries += 1
                time.sleep(delay)
                delay = min(0.5, delay * 2)
                self._refresh()
        out: list[bytes] = []
        for k, v in zip(keys, values):
            try:
                out.append(decode_page(v, f"redis tier {self.url} key {k}"))
            except CorruptPageError:
                if not out:
                    raise
                break
        return out

    def free(self, key: int) -> None:
        with self._lock:
            size = self._sizes[key] if 0 <= key < self._top else 0
            if not size:
                raise InvariantError(f"redis tier: free of id {key} that is not in use")
            self._used -= size
            self._sizes[key] = 0
            self._in_use -= 1
            self._doomed.append(key)
            flush = len(self._doomed) >= _FREE_FLUSH and self._up
            doomed = self._doomed if flush else []
            if flush:
                self._doomed = []
        if doomed:
            try:
                self._send_deletes([self._key(i) for i in doomed])
            except self._errors as exc:
                self._failed(exc)
                with self._lock:
                    self._doomed.extend(doomed)

    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def capacity_bytes(self) -> int | None:
        return self._capacity

    def keys_in_use(self) -> int:
        with self._lock:
            return self._in_use

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"round_trips": self.round_trips, "retries": self.retries,
                    "errors": self.errors, "wait_failures": self.wait_failures,
                    "keys": self._in_use}

    def _check(self) -> None:
        with self._lock:
            in_use = {i for i in range(self._top) if self._sizes[i]}
            free, doomed = set(self._free), set(self._doomed)
            if in_use & free or in_use & doomed or free & doomed:
                raise InvariantError("redis tier: an id is both in use and free or queued")
            if len(free) != len(self._free) or len(doomed) != len(self._doomed):
                raise InvariantError("redis tier: an id is queued twice")
            total = sum(self._sizes[i] for i in in_use)
            if total != self._used or len(in_use) != self._in_use:
                raise InvariantError(f"redis tier: used {self._used} bytes / {self._in_use} "
                                     f"ids, recount {total} / {len(in_use)}")

    def close(self) -> None:
        """Delete this instance's keys (unless ``keep``) and close the connections.
        Idempotent."""
        if self.region.fd < 0:
            return
        if not self._keep:
            with self._lock:
                ids = [i for i in range(self._top) if self._sizes[i]] + self._doomed
                self._doomed = []
            try:
                for lo in range(0, len(ids), 1024):
                    self._send_deletes([self._key(i) for i in ids[lo:lo + 1024]])
            except self._errors:
                pass  # the store is gone: nothing is left to delete from here
        try:
            self._r.close()
        except self._errors:
            pass
        self.region.close()

    def detach(self) -> None:
        """Close the connections and the id table's mapping; keep every key (a successor
        adopts them with the id table)."""
        self._keep = True
        self.close()

    # -- state across a restart ----------------------------------------------------------------

    def state_fds(self) -> dict[str, int]:
        """``{"redis-ids": the id table's region fd}``."""
        return {IDS_KIND: self.region.fd}

    @classmethod
    def adopt_state(cls, fds: Mapping[str, int], *, get: Callable[[str], int], index: int,
                    writable: bool, options: Mapping[str, Any],
                    seal_state: bytes | None = None) -> RedisTier:
        """The tier whose id table ``fds["redis-ids"]`` holds, on the store its ``[tier.redis]``
        options name (the same as before the restart: the keys live there)."""
        if IDS_KIND not in fds:
            raise StateFormatError(f"redis tier: state fds {sorted(fds)} lack {IDS_KIND!r}")
        if not writable:
            raise StateFormatError("redis tier: its id table can only be adopted writable")
        opts = dict(options)
        if "url" not in opts:
            raise StateFormatError("redis tier: adopting it needs [tier.redis] url")
        region = StateRegion.adopt(fds[IDS_KIND], IDS_KIND, IDS_KIND_VERSION, writable=True)
        try:
            url = str(opts.pop("url"))
            opts["namespace"] = _unpack_ns(region)  # where the adopted keys are
            return cls(url, region=region, keep=True, **opts)
        except BaseException:
            region.close()
            raise

    def reconcile(self, live: set[int]) -> int:
        with self._lock:
            stray = [i for i in range(self._top) if self._sizes[i] and i not in live]
            for i in stray:
                self._used -= self._sizes[i]
                self._sizes[i] = 0
                self._in_use -= 1
                self._doomed.append(i)
        return len(stray)
