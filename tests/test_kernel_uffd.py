"""swapd.kernel.uffd against the real kernel: a client process's faults served from here.

Each cross-process test uses :class:`ClientProcess` (tests/test_kernel_support.py):
the child maps a memfd MAP_SHARED, registers it MISSING|WP with a userfaultfd and
sends both fds here; this process resolves its faults as the daemon would.  The
in-process tests register a memfd mapping of this process but never touch it
(a fault in our own thread would block the test on itself); they check results
through ``pread`` of the memfd and the pagemap.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import signal
from collections.abc import Iterator

import pytest

from swapd.errors import ClientGoneError
from swapd.kernel import uffd as U
from swapd.kernel.errors import (
    FdTypeError,
    KernelError,
    UffdClientGoneError,
    UffdEventPendingError,
    UffdExistsError,
    UffdFaultError,
    UffdInvalidError,
    UffdPartialCopyError,
    UffdRangeGoneError,
)
from swapd.kernel.memfd import PageBuffer, memfd_create, punch_hole, seek_data, seek_hole
from swapd.kernel.mm import MADV_DONTNEED, MADV_REMOVE, address_of
from swapd.kernel.pagemap import PM_PRESENT, PM_SWAP, PM_UFFD_WP, read_pagemap_entries
from swapd.kernel.uffd import (
    ForkEvent,
    PagefaultEvent,
    RemoveEvent,
    UnmapEvent,
    Userfaultfd,
)
from tests.test_kernel_support import (  # noqa: F401  (fixtures)
    PAGE,
    UFFD_SKIP,
    ClientProcess,
    client_fixture,
    crc,
    kernel_alarm_fixture,
    wait_events,
)

pytestmark = [pytest.mark.usefixtures("kernel_alarm"), UFFD_SKIP]


def _pattern(i: int) -> bytes:
    return bytes((i * 7 + j) & 0xFF for j in range(256)) * (PAGE // 256)


@pytest.fixture
def src() -> Iterator[PageBuffer]:
    buf = PageBuffer(8)
    for i in range(8):
        buf.page(i)[:] = _pattern(i)
    yield buf
    buf.close()


class _Local:
    """A memfd mapped MAP_SHARED in this process, registered with our own userfaultfd."""

    def __init__(self, npages: int, features: int, mode: int) -> None:
        self.fd = memfd_create("uffd-local")
        os.ftruncate(self.fd, npages * PAGE)
        self.map = mmap.mmap(self.fd, npages * PAGE, mmap.MAP_SHARED)
        self.base = address_of(self.map)
        self.uffd = Userfaultfd.create()
        self.api = self.uffd.api(features)
        self.ioctls = self.uffd.register(self.base, npages * PAGE, mode)

    def close(self) -> None:
        self.uffd.close()
        self.map.close()
        os.close(self.fd)


@pytest.fixture
def local() -> Iterator[_Local]:
    loc = _Local(8, U.UFFD_FEATURE_MISSING_SHMEM | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
                 | U.UFFD_FEATURE_MINOR_SHMEM,
                 U.UFFDIO_REGISTER_MODE_MISSING | U.UFFDIO_REGISTER_MODE_WP)
    yield loc
    loc.close()


# --- ABI constants ------------------------------------------------------------------------


def test_ioctl_numbers_match_the_compiled_header() -> None:
    # Values checked by compiling against <linux/userfaultfd.h> (docs/design.md sec. 11.9).
    assert U.UFFDIO_API == 0xC018AA3F
    assert U.UFFDIO_REGISTER == 0xC020AA00
    assert U.UFFDIO_UNREGISTER == 0x8010AA01
    assert U.UFFDIO_WAKE == 0x8010AA02
    assert U.UFFDIO_COPY == 0xC028AA03
    assert U.UFFDIO_ZEROPAGE == 0xC020AA04
    assert U.UFFDIO_WRITEPROTECT == 0xC018AA06
    assert U.UFFDIO_CONTINUE == 0xC020AA07
    assert U.UFFDIO_POISON == 0xC020AA08
    assert U.UFFD_MSG_SIZE == 32


# --- in-process: handshake, registration and error mapping --------------------------------


def test_api_reports_kernel_features_and_enables_only_the_requested(local: _Local) -> None:
    assert local.api.features & U.UFFD_FEATURE_MISSING_SHMEM
    assert local.api.features & U.UFFD_FEATURE_POISON  # 6.6+, this machine is 6.18
    assert local.api.ioctls & (1 << 0x3F)  # UFFDIO_API itself
    assert local.uffd.features == local.uffd.fdinfo().features
    assert local.uffd.fdinfo().features == (U.UFFD_FEATURE_MISSING_SHMEM
                                            | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
                                            | U.UFFD_FEATURE_MINOR_SHMEM)
    local.uffd._check()
    with pytest.raises(UffdInvalidError) as ei:  # a second handshake
        local.uffd.api(0)
    assert ei.value.errno == errno.EINVAL and ei.value.op == "UFFDIO_API"


def test_register_returns_the_range_ioctls(local: _Local) -> None:
    for bit in (U.IOCTL_COPY, U.IOCTL_ZEROPAGE, U.IOCTL_WAKE, U.IOCTL_WRITEPROTECT):
        assert local.ioctls & bit
    assert not local.ioctls & U.IOCTL_CONTINUE  # MINOR not registered
    local.uffd.unregister(local.base, 8 * PAGE)
    mask = local.uffd.register(local.base, 8 * PAGE, U.UFFDIO_REGISTER_MODE_MINOR)
    assert mask & U.IOCTL_CONTINUE


def test_copy_eexist_partial_einval_efault_enoent(local: _Local, src: PageBuffer) -> None:
    u, base = local.uffd, local.base
    assert u.copy(base, src.address, PAGE) == PAGE
    with pytest.raises(UffdExistsError) as exists:
        u.copy(base, src.address, PAGE)
    assert exists.value.errno == errno.EEXIST and "already present" in str(exists.value)
    # [1, 4) with page 2 present: copies page 1, stops, EAGAIN with copy = 4096
    u.copy(base + 2 * PAGE, src.address + 2 * PAGE, PAGE)
    with pytest.raises(UffdPartialCopyError) as part:
        u.copy(base + PAGE, src.address + PAGE, 3 * PAGE)
    assert part.value.copied == PAGE and part.value.errno == errno.EAGAIN
    with pytest.raises(UffdInvalidError):
        u.copy(base + 5 * PAGE + 8, src.address, PAGE)
    with pytest.raises(UffdFaultError):
        u.copy(base + 5 * PAGE, 0, PAGE)
    assert local.map.closed is False
    data = os.pread(local.fd, 3 * PAGE, 0)
    assert data == _pattern(0) + _pattern(1) + _pattern(2)
    entries = read_pagemap_entries(os.getpid(), base, 4)
    assert [bool(e & PM_PRESENT) for e in entries] == [True, True, True, False]
    u.unregister(base, 8 * PAGE)
    with pytest.raises(UffdRangeGoneError):
        u.copy(base + 6 * PAGE, src.address, PAGE)


def test_copy_multi_page_and_wp_mode(local: _Local, src: PageBuffer) -> None:
    u, base = local.uffd, local.base
    assert u.copy(base, src.address, 4 * PAGE, wp=True) == 4 * PAGE
    assert os.pread(local.fd, 4 * PAGE, 0) == b"".join(_pattern(i) for i in range(4))
    entries = read_pagemap_entries(os.getpid(), base, 4)
    assert all(e & PM_PRESENT and e & PM_UFFD_WP for e in entries)
    u.writeprotect(base, 4 * PAGE, wp=False)
    assert not any(e & PM_UFFD_WP for e in read_pagemap_entries(os.getpid(), base, 4))


def test_zeropage(local: _Local) -> None:
    u, base = local.uffd, local.base
    assert u.zeropage(base + PAGE, 2 * PAGE) == 2 * PAGE
    with pytest.raises(UffdExistsError):
        u.zeropage(base + 2 * PAGE, PAGE)
    assert os.pread(local.fd, 2 * PAGE, PAGE) == bytes(2 * PAGE)


def test_continue_maps_page_cache_pages() -> None:
    loc = _Local(4, U.UFFD_FEATURE_MISSING_SHMEM | U.UFFD_FEATURE_MINOR_SHMEM,
                 U.UFFDIO_REGISTER_MODE_MINOR)
    try:
        os.pwrite(loc.fd, _pattern(3), 0)
        assert not read_pagemap_entries(os.getpid(), loc.base, 1)[0] & PM_PRESENT
        assert loc.uffd.continue_(loc.base, PAGE) == PAGE
        assert read_pagemap_entries(os.getpid(), loc.base, 1)[0] & PM_PRESENT
        with pytest.raises(UffdExistsError):
            loc.uffd.continue_(loc.base, PAGE)
        with pytest.raises(UffdFaultError) as hole:
            loc.uffd.continue_(loc.base + PAGE, PAGE)
        assert "page cache" in hole.value.meaning
    finally:
        loc.close()


def test_writeprotect_rejects_wp_with_dontwake(local: _Local, src: PageBuffer) -> None:
    local.uffd.copy(local.base, src.address, PAGE)
    with pytest.raises(UffdInvalidError):
        local.uffd.writeprotect(local.base, PAGE, wp=True, dontwake=True)


def test_from_fd_rejects_other_fds() -> None:
    fd = memfd_create("not-a-uffd")
    try:
        with pytest.raises(FdTypeError, match="not a userfaultfd"):
            Userfaultfd.from_fd(fd)
    finally:
        os.close(fd)
    assert not U.is_userfaultfd(fd)


def test_create_via_dev_userfaultfd() -> None:
    if not os.path.exists("/dev/userfaultfd"):
        pytest.skip("/dev/userfaultfd is absent (kernel < 6.1 or not built)")
    with Userfaultfd.create(via_device=True) as u:
        assert U.is_userfaultfd(u.fd)
        assert u.api(U.UFFD_FEATURE_MISSING_SHMEM).features & U.UFFD_FEATURE_MISSING_SHMEM
    assert u.fd == -1


def test_closed_fd_raises_a_kernel_error(src: PageBuffer) -> None:
    u = Userfaultfd.create()
    u.close()
    u.close()  # idempotent
    with pytest.raises(KernelError) as ei:
        u.copy(0, src.address, PAGE)
    assert ei.value.errno == errno.EBADF


def test_read_events_on_closed_fd_raises() -> None:
    u = Userfaultfd.create()
    u.close()
    with pytest.raises(KernelError) as ei:
        u.read_events()
    assert ei.value.errno == errno.EBADF


# --- cross-process: a client's faults --------------------------------------------------------


def test_missing_read_fault_served_by_copy(client: ClientProcess, src: PageBuffer) -> None:
    assert client.uffd is not None
    client.send("R 3")
    (ev,) = wait_events(client.uffd)
    assert isinstance(ev, PagefaultEvent)
    assert ev.address == client.addr(3) and ev.flags == 0
    assert not ev.is_write and not ev.is_wp and not ev.is_minor
    assert ev.ptid == client.pid  # UFFD_FEATURE_THREAD_ID
    assert client.uffd.copy(ev.page_address, src.address + 3 * PAGE, PAGE) == PAGE
    assert client.reply() == f"ok {crc(_pattern(3))}"
    # the page is now in the memfd and mapped: a second read raises no fault
    assert client.command("R 3") == f"ok {crc(_pattern(3))}"
    with pytest.raises(UffdExistsError):
        client.uffd.copy(client.addr(3), src.address, PAGE)


def test_never_written_page_served_by_zeropage(client: ClientProcess) -> None:
    assert client.uffd is not None
    client.send("R 5")
    (ev,) = wait_events(client.uffd)
    assert isinstance(ev, PagefaultEvent) and ev.address == client.addr(5)
    client.uffd.zeropage(ev.address, PAGE)
    assert client.reply() == f"ok {crc(bytes(PAGE))}"


def test_write_fault_flags(client: ClientProcess, src: PageBuffer) -> None:
    assert client.uffd is not None
    client.send("W 1 9")
    (ev,) = wait_events(client.uffd)
    assert isinstance(ev, PagefaultEvent)
    assert ev.is_write and not ev.is_wp and ev.flags == U.UFFD_PAGEFAULT_FLAG_WRITE
    client.uffd.copy(ev.address, src.address, PAGE)
    assert client.reply() == "ok"
    assert os.pread(client.memfd, PAGE, PAGE) == bytes([9]) * PAGE


@pytest.fixture
def populated(client: ClientProcess, src: PageBuffer) -> ClientProcess:
    """The client with pages 0..7 copied in (pattern i), mapped writable."""
    assert client.uffd is not None
    client.uffd.copy(client.addr(0), src.address, 8 * PAGE)
    return client


def test_wp_fault_resolved_by_punch_then_wake(populated: ClientProcess) -> None:
    c = populated
    u = c.uffd
    assert u is not None
    u.writeprotect(c.addr(7), PAGE, wp=True)
    c.send("w 7 200")  # write to a protected page: blocks with WRITE|WP
    (ev,) = wait_events(u)
    assert isinstance(ev, PagefaultEvent) and ev.is_write and ev.is_wp
    assert ev.flags == U.UFFD_PAGEFAULT_FLAG_WRITE | U.UFFD_PAGEFAULT_FLAG_WP
    assert not c.has_reply(0.05)  # still blocked
    with PageBuffer(1) as buf:
        stored = bytes(buf.pread_into(c.memfd, 7 * PAGE, 1))  # evict: read ...
        assert stored == _pattern(7)
        punch_hole(c.memfd, 7 * PAGE, PAGE)  # ... and punch
        assert seek_data(c.memfd, 7 * PAGE) is None
        assert seek_hole(c.memfd, 0) == 7 * PAGE
        entry = read_pagemap_entries(c.pid, c.addr(7), 1)[0]
        assert entry & PM_SWAP and entry & PM_UFFD_WP and not entry & PM_PRESENT
        u.wake(c.addr(7), PAGE)  # the client retries: now a MISSING write fault
        (ev2,) = wait_events(u)
        assert isinstance(ev2, PagefaultEvent) and ev2.address == c.addr(7)
        assert ev2.flags == U.UFFD_PAGEFAULT_FLAG_WRITE
        buf.view[:] = stored
        u.copy(c.addr(7), buf.address, PAGE)  # serve the stored copy
    assert c.reply() == "ok"
    expect = bytes([200]) + _pattern(7)[1:]  # the write landed on top of the stored data
    assert os.pread(c.memfd, PAGE, 7 * PAGE) == expect
    assert c.command("R 7") == f"ok {crc(expect)}"


def test_wp_fault_resolved_by_unprotect(populated: ClientProcess) -> None:
    c = populated
    u = c.uffd
    assert u is not None
    u.writeprotect(c.addr(2), 2 * PAGE, wp=True)
    c.send("w 3 1")
    (ev,) = wait_events(u)
    assert isinstance(ev, PagefaultEvent) and ev.is_wp and ev.address == c.addr(3)
    u.writeprotect(c.addr(3), PAGE, wp=False)  # abort the eviction of page 3: wakes
    assert c.reply() == "ok"
    assert os.pread(c.memfd, 1, 3 * PAGE) == b"\x01"
    entries = read_pagemap_entries(c.pid, c.addr(2), 2)
    assert entries[0] & PM_UFFD_WP and not entries[1] & PM_UFFD_WP


def test_madv_remove_sends_remove_event(populated: ClientProcess, src: PageBuffer) -> None:
    c = populated
    u = c.uffd
    assert u is not None
    c.send(f"M 2 2 {MADV_REMOVE}")
    (ev,) = wait_events(u)  # the client's madvise blocks until we read this
    assert ev == RemoveEvent(c.addr(2), c.addr(4))
    assert c.reply() == "ok"
    assert seek_data(c.memfd, 2 * PAGE) == 4 * PAGE  # MADV_REMOVE freed the pages
    c.send("R 2")  # freed: the next access is MISSING again
    (ev2,) = wait_events(u)
    assert isinstance(ev2, PagefaultEvent) and ev2.address == c.addr(2)
    u.copy(ev2.address, src.address + 5 * PAGE, PAGE)
    assert c.reply() == f"ok {crc(_pattern(5))}"


def test_madv_dontneed_sends_remove_event(populated: ClientProcess) -> None:
    c = populated
    assert c.uffd is not None
    c.send(f"M 0 1 {MADV_DONTNEED}")
    assert wait_events(c.uffd) == [RemoveEvent(c.addr(0), c.addr(1))]
    assert c.reply() == "ok"
    # shmem keeps the page: the next read maps it again with no fault
    assert c.command("R 0") == f"ok {crc(_pattern(0))}"


def test_munmap_event_pending_then_range_gone(populated: ClientProcess,
                                              src: PageBuffer) -> None:
    c = populated
    u = c.uffd
    assert u is not None
    c.send("U")
    assert select.select([u.fd], [], [], 10)[0], "no UNMAP event"
    # the event is queued but unread: COPY refuses with EAGAIN and copies nothing
    with pytest.raises(UffdEventPendingError) as pend:
        u.copy(c.addr(9), src.address, PAGE)
    assert pend.value.errno == errno.EAGAIN and not isinstance(pend.value,
                                                                UffdPartialCopyError)
    assert not c.has_reply(0.05)  # munmap blocks until the event is read
    assert u.read_events() == [UnmapEvent(c.addr(0), c.addr(16))]
    assert c.reply() == "ok"
    with pytest.raises(UffdRangeGoneError):
        u.copy(c.addr(9), src.address, PAGE)


def test_fork_event_hands_over_the_childs_userfaultfd(populated: ClientProcess,
                                                      src: PageBuffer) -> None:
    c = populated
    assert c.uffd is not None
    c.send("F 12")
    (ev,) = wait_events(c.uffd)  # fork() blocks until this is read
    assert isinstance(ev, ForkEvent)
    with Userfaultfd.from_fd(ev.ufd) as child_uffd:
        (fault,) = wait_events(child_uffd)  # the grandchild's read of page 12
        assert isinstance(fault, PagefaultEvent) and fault.address == c.addr(12)
        child_uffd.copy(fault.address, src.address + 4 * PAGE, PAGE)
        gc = c.reply().split()
        assert gc[0] == "gc" and int(gc[1]) == fault.ptid and int(gc[2]) == crc(_pattern(4))
        ok, pid, status = c.reply().split()
        assert ok == "ok" and int(pid) == fault.ptid and int(status) == 0
    # shared memfd: the page the grandchild got is there for the parent too
    assert c.command("R 12") == f"ok {crc(_pattern(4))}"


def test_poison_gives_the_waiting_client_sigbus(client: ClientProcess) -> None:
    u = client.uffd
    assert u is not None
    client.send("R 11")
    (ev,) = wait_events(u)
    assert isinstance(ev, PagefaultEvent)
    assert u.poison(ev.address, PAGE) == PAGE  # wakes the waiter, which refaults: SIGBUS
    assert client.proc.wait(timeout=10) == -signal.SIGBUS


def test_poison_refuses_a_wp_marker_until_unprotected(populated: ClientProcess) -> None:
    c = populated
    u = c.uffd
    assert u is not None
    u.writeprotect(c.addr(6), PAGE, wp=True)
    punch_hole(c.memfd, 6 * PAGE, PAGE)  # a uffd-wp marker remains
    with pytest.raises(UffdExistsError) as ei:
        u.poison(c.addr(6), PAGE)
    assert "marker" in ei.value.meaning
    u.writeprotect(c.addr(6), PAGE, wp=False, dontwake=True)
    assert u.poison(c.addr(6), PAGE) == PAGE
    c.send("R 6")
    assert c.proc.wait(timeout=10) == -signal.SIGBUS


def test_client_exit_gives_esrch(populated: ClientProcess, src: PageBuffer) -> None:
    c = populated
    u = c.uffd
    assert u is not None
    c.send("Q")
    assert c.proc.wait(timeout=10) == 0
    for call in (lambda: u.copy(c.addr(9), src.address, PAGE),
                 lambda: u.zeropage(c.addr(9), PAGE),
                 lambda: u.writeprotect(c.addr(0), PAGE, wp=True)):
        with pytest.raises(UffdClientGoneError) as ei:
            call()
        assert ei.value.errno == errno.ESRCH
        assert isinstance(ei.value, ClientGoneError)
    u.wake(c.addr(0), PAGE)  # WAKE does not need the mm
    assert u.read_events() == []  # exit is not visible on the uffd


def test_wake_redelivers_a_fault_that_was_read_but_not_served(client: ClientProcess,
                                                               src: PageBuffer) -> None:
    """A restarted daemon's recovery: UFFDIO_WAKE of the range re-delivers the fault."""
    u = client.uffd
    assert u is not None
    client.send("R 4")
    (lost,) = wait_events(u)  # read, then "the daemon dies" before serving it
    u.wake(client.addr(0), 16 * PAGE)
    (again,) = wait_events(u)
    assert again == lost
    u.copy(again.address, src.address + PAGE, PAGE)  # type: ignore[union-attr]
    assert client.reply() == f"ok {crc(_pattern(1))}"


def test_copy_partial_across_processes(populated: ClientProcess, src: PageBuffer) -> None:
    c = populated
    u = c.uffd
    assert u is not None
    # pages 8..11 missing, page 10 filled first: copy 8..11 stops after 8, 9
    u.copy(c.addr(10), src.address, PAGE)
    with pytest.raises(UffdPartialCopyError) as ei:
        u.copy(c.addr(8), src.address, 4 * PAGE)
    assert ei.value.copied == 2 * PAGE
    u.copy(c.addr(11), src.address + 3 * PAGE, PAGE)  # continue after the present page
    assert os.pread(c.memfd, 4 * PAGE, 8 * PAGE) == (_pattern(0) + _pattern(1) + _pattern(0)
                                                     + _pattern(3))


def test_client_killed_mid_fault(client: ClientProcess, src: PageBuffer) -> None:
    u = client.uffd
    assert u is not None
    client.send("R 1")
    (ev,) = wait_events(u)
    client.proc.send_signal(signal.SIGKILL)  # killed while blocked in the fault
    assert client.proc.wait(timeout=10) == -signal.SIGKILL
    with pytest.raises(UffdClientGoneError):
        u.copy(ev.address, src.address, PAGE)  # type: ignore[union-attr]


def test_kernel_mode_access_is_served_through_the_uffd(client: ClientProcess,
                                                       src: PageBuffer) -> None:
    u = client.uffd
    assert u is not None
    client.send("K 4")  # readv() into the missing page: the kernel faults on it
    (ev,) = wait_events(u)
    assert isinstance(ev, PagefaultEvent) and ev.address == client.addr(4) and ev.is_write
    u.copy(ev.address, src.address, PAGE)
    assert client.reply() == f"ok {PAGE}"
    assert os.pread(client.memfd, PAGE, 4 * PAGE) == bytes(PAGE)  # /dev/zero landed


def test_user_mode_only_fails_kernel_accesses_with_efault(kernel_alarm: None,
                                                          src: PageBuffer) -> None:
    c = ClientProcess(4, user_mode_only=True)
    try:
        u = c.uffd
        assert u is not None
        assert c.command("K 1") == f"errno {errno.EFAULT}"  # no fault delivered, no block
        assert u.read_events() == []
        c.send("R 1")  # user-mode accesses are still served
        (ev,) = wait_events(u)
        assert isinstance(ev, PagefaultEvent)
        u.copy(ev.address, src.address + 2 * PAGE, PAGE)
        assert c.reply() == f"ok {crc(_pattern(2))}"
    finally:
        c.close()


def test_fdinfo_counts_the_pending_fault(client: ClientProcess, src: PageBuffer) -> None:
    u = client.uffd
    assert u is not None
    client.send("R 0")
    assert select.select([u.fd], [], [], 10)[0]
    info = u.fdinfo()
    assert (info.pending, info.total) == (1, 1)
    (ev,) = u.read_events()
    info = u.fdinfo()
    assert (info.pending, info.total) == (0, 1)  # read, not yet woken
    u.copy(ev.address, src.address, PAGE)  # type: ignore[union-attr]
    assert client.reply() == f"ok {crc(_pattern(0))}"
    assert u.fdinfo().total == 0


def test_ioctls_from_two_threads_at_once(local: _Local) -> None:
    """Per-thread argument buffers: concurrent copies never mix up their arguments."""
    import threading

    bufs = [PageBuffer(1), PageBuffer(1)]
    bufs[0].view[:] = b"\x11" * PAGE
    bufs[1].view[:] = b"\x22" * PAGE
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for rnd in range(40):
                for p in range(t, 8, 2):
                    local.uffd.copy(local.base + p * PAGE, bufs[t].address, PAGE)
                for p in range(t, 8, 2):
                    local.uffd.writeprotect(local.base + p * PAGE, PAGE, wp=rnd % 2 == 0)
                for p in range(t, 8, 2):
                    punch_hole(local.fd, p * PAGE, PAGE)
                    local.uffd.writeprotect(local.base + p * PAGE, PAGE, wp=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=20)
    assert not errors, errors
    for p in range(8):
        local.uffd.copy(local.base + p * PAGE, bufs[p % 2].address, PAGE)
        assert os.pread(local.fd, PAGE, p * PAGE) == bytes([0x11 * (1 + p % 2)]) * PAGE
    for b in bufs:
        b.close()
