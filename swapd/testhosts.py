"""Test hosts in network namespaces, and Redis servers on them (for the tests and the benches).

A :class:`HostNet` is a Linux bridge in the caller's network namespace and N hosts, each a
network namespace joined to the bridge by a veth pair, all made and removed with pyroute2
(``netns``, ``IPRoute``, ``NetNS``).  The bridge and the hosts get link-local IPv4 addresses
(169.254.<net>.0/24: the bridge is .1, host i is .(10+i)), so nothing leaves this machine and
no route or sysctl of the caller's namespace is touched.  A host's link can be cut
(:meth:`Host.cut`) and restored; processes run inside a host with :meth:`Host.popen`.

:class:`RedisServer` runs ``redis-server`` (Debian's package) in a host, with no persistence;
:func:`redis_cluster` makes a Redis Cluster of primaries with a replica each, every node on its
own host.  Everything is stopped and removed by ``close()`` / the context managers, also when a
test fails half-way: namespaces and links are named after the creating process so a crashed
run's leftovers are recognisable (``swt<pid>...``) and :func:`remove_leftovers` deletes them.

The kernel of these machines has no ``sch_netem`` (CONFIG_NET_SCH_NETEM is not set), so added
delay is not done with traffic control here: :class:`DelayProxy` forwards a TCP port with a
fixed added latency per direction in userspace.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["DelayProxy", "Host", "HostNet", "RedisServer", "redis_cluster", "remove_leftovers",
           "unavailable_reason"]

_PREFIX = "swt"


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made here (not root, no redis-server), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian package redis-server)"
    try:
        import pyroute2  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        return f"pyroute2 is missing: {exc}"
    return None


def remove_leftovers() -> int:
    """Remove namespaces and links named by a HostNet of a process that no longer runs."""
    from pyroute2 import IPRoute, netns

    removed = 0
    for name in netns.listnetns():
        pid = _owner(name)
        if pid is not None and not _alive(pid):
            with contextlib.suppress(OSError):
                netns.remove(name)
                removed += 1
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            pid = _owner(name)
            if pid is not None and not _alive(pid):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])
                    removed += 1
    return removed


def _owner(name: str) -> int | None:
    if not name.startswith(_PREFIX):
        return None
    digits = ""
    for ch in name[len(_PREFIX):]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Host:
    """One network namespace on the bridge (see the module docstring)."""

    def __init__(self, net: HostNet, index: int) -> None:
        self.net = net
        self.index = index
        self.ns = f"{_PREFIX}{os.getpid()}n{net.serial}h{index}"
        self.addr = f"169.254.{net.subnet}.{10 + index}"
        self.veth = f"{_PREFIX}{os.getpid()}v{net.serial}h{index}"  # the bridge side
        self._inside = "eth0"
        self.procs: list[subprocess.Popen[bytes]] = []

    def _create(self) -> None:
        from pyroute2 import IPRoute, NetNS, netns

        netns.create(self.ns)
        with IPRoute() as ipr:
            peer = f"{self.veth}p"
            ipr.link("add", ifname=self.veth, kind="veth", peer=peer)
            (pidx,) = ipr.link_lookup(ifname=peer)
            ipr.link("set", index=pidx, net_ns_fd=self.ns)
            (vidx,) = ipr.link_lookup(ifname=self.veth)
            ipr.link("set", index=vidx, master=self.net.bridge_index)
            ipr.link("set", index=vidx, state="up")
        with NetNS(self.ns) as ns:
            (idx,) = ns.link_lookup(ifname=peer)
            ns.link("set", index=idx, ifname=self._inside)
            ns.addr("add", index=idx, address=self.addr, prefixlen=24)
            ns.link("set", index=idx, state="up")
            (lo,) = ns.link_lookup(ifname="lo")
            ns.link("set", index=lo, state="up")

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host's namespace; stopped by :meth:`HostNet.close`."""
        ns = self.ns

        def enter() -> None:
            from pyroute2 import netns

            netns.setns(ns)

        p = subprocess.Popen(list(argv), preexec_fn=enter, **kw)
        self.procs.append(p)
        return p

    def cut(self) -> None:
        """Cut this host's link (its veth on the bridge goes down): packets are lost."""
        self._set_state("down")

    def restore(self) -> None:
        """Bring the link back up."""
        self._set_state("up")

    def _set_state(self, state: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            (vidx,) = ipr.link_lookup(ifname=self.veth)
            ipr.link("set", index=vidx, state=state)

    def _destroy(self) -> None:
        from pyroute2 import IPRoute, netns

        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(10)
        self.procs.clear()
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=self.veth):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=idx)
        with contextlib.suppress(OSError):
            netns.remove(self.ns)


class HostNet:
    """A bridge and ``nhosts`` hosts; a context manager that removes everything it made."""

    _serial = 0

    def __init__(self, nhosts: int) -> None:
        HostNet._serial += 1
        self.serial = HostNet._serial
        self.subnet = 100 + (os.getpid() + self.serial) % 100
        self.bridge = f"{_PREFIX}{os.getpid()}b{self.serial}"
        self.addr = f"169.254.{self.subnet}.1"
        self.bridge_index = -1
        self.hosts: list[Host] = []
        try:
            self._create(nhosts)
        except BaseException:
            self.close()
            raise

    def _create(self, nhosts: int) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            (self.bridge_index,) = ipr.link_lookup(ifname=self.bridge)
            ipr.addr("add", index=self.bridge_index, address=self.addr, prefixlen=24)
            ipr.link("set", index=self.bridge_index, state="up")
        for i in range(nhosts):
            h = Host(self, i)
            self.hosts.append(h)
            h._create()

    def close(self) -> None:
        """Stop every process, remove every namespace, link and the bridge."""
        from pyroute2 import IPRoute

        for h in self.hosts:
            h._destroy()
        self.hosts.clear()
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=self.bridge):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=idx)

    def __enter__(self) -> HostNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {host}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on {host}:{port} did not answer in {timeout} s")
        time.sleep(0.05)


class RedisServer:
    """``redis-server`` on a host (no persistence), optionally a cluster node."""

    def __init__(self, host: Host, port: int = 6379, *, cluster: bool = False,
                 extra: Sequence[str] = ()) -> None:
        self.host = host
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="swapd-redis-")
        argv = ["redis-server", "--bind", host.addr, "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no",
                "--logfile", os.path.join(self.dir, "log")]
        if cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                     "--cluster-config-file", os.path.join(self.dir, "nodes.conf")]
        argv += list(extra)
        self.proc = host.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(host.addr, port, self.proc, 15)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://{self.host.addr}:{self.port}"

    def stop(self) -> None:
        """Kill the server (as a crash would) and remove its directory."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_cluster(net: HostNet, primaries: int = 3) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of ``primaries`` primaries with one replica each, one node per host of
    ``net`` (which needs 2 x primaries hosts).  Yields the nodes, primaries first."""
    if len(net.hosts) < 2 * primaries:
        raise ValueError(f"a cluster of {primaries} primaries needs {2 * primaries} hosts")
    nodes: list[RedisServer] = []
    try:
        for h in net.hosts[:2 * primaries]:
            nodes.append(RedisServer(h, 7000, cluster=True))
        addrs = [f"{n.host.addr}:{n.port}" for n in nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _wait_cluster_ok(nodes, 60)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _wait_cluster_ok(nodes: Sequence[RedisServer], timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while True:
        ok = 0
        for n in nodes:
            try:
                r = redis.Redis(host=n.host.addr, port=n.port, socket_timeout=1)
                info = r.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                text = info.decode() if isinstance(info, bytes) else str(info)
                repl = r.info("replication")
                synced = repl.get("role") == "master" or repl.get("master_link_status") == "up"
                ok += "cluster_state:ok" in text and synced
                r.close()
            except redis.RedisError:
                pass
        if ok == len(nodes):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Redis Cluster did not come up in {timeout} s")
        time.sleep(0.2)


class DelayProxy:
    """A TCP forwarder on 127.0.0.1 adding ``delay_s`` per direction to every chunk.

    Stands in for netem's delay where the kernel lacks it (see the module docstring): each
    chunk is sent on once its own delay has passed, so chunks in flight overlap as on a wire.
    The delay is a sleep, so it is at least ``delay_s`` and coarser than netem's (tens of
    microseconds of timer slack).  Two threads per connection direction; stopped by
    :meth:`close`.
    """

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target = target
        self.delay_s = delay_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if not r:
                continue
            try:
                c, _ = self.sock.accept()
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Read ``src`` as data arrives, stamping each chunk; a writer sends each chunk to
        ``dst`` once its own delay has passed (chunks in flight overlap, as on a wire)."""
        import collections

        d = self.delay_s
        q: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()
        done = False

        def writer() -> None:
            with contextlib.suppress(OSError):
                while True:
                    with ready:
                        while not q and not done:
                            ready.wait(0.2)
                        if not q:
                            break
                        due, data = q.popleft()
                    left = due - time.perf_counter()
                    if left > 0:  # sleep, not spin: a spinning thread holds the GIL
                        time.sleep(left)
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = src.recv(1 << 16)
                if not data:
                    break
                with ready:
                    q.append((time.perf_counter() + d, data))
                    ready.notify()
        with ready:
            done = True
            ready.notify()
        w.join(5)

    def close(self) -> None:
        """Stop forwarding and close every socket."""
        self._stop.set()
        for s in [self.sock, *self._conns]:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(5)
