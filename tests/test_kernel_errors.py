"""swapd.kernel.errors: every errno becomes the class that names what to do next."""

from __future__ import annotations

import errno

import pytest

from swapd.errors import ClientGoneError, SwapdError
from swapd.kernel.errors import (
    KernelError,
    KernelPermissionError,
    ProcessGoneError,
    UffdClientGoneError,
    UffdError,
    UffdEventPendingError,
    UffdExistsError,
    UffdFaultError,
    UffdInvalidError,
    UffdPartialCopyError,
    UffdRangeGoneError,
    from_oserror,
    kernel_error,
    uffd_error,
)


@pytest.mark.parametrize(("err", "cls"), [
    (errno.EEXIST, UffdExistsError),
    (errno.EAGAIN, UffdEventPendingError),
    (errno.ENOENT, UffdRangeGoneError),
    (errno.ESRCH, UffdClientGoneError),
    (errno.EINVAL, UffdInvalidError),
    (errno.EFAULT, UffdFaultError),
    (errno.EPERM, KernelPermissionError),
    (errno.ENOMEM, UffdError),
])
def test_uffd_errno_mapping(err: int, cls: type[KernelError]) -> None:
    exc = uffd_error(err, "UFFDIO_COPY")
    assert type(exc) is cls
    assert exc.errno == err and exc.op == "UFFDIO_COPY"
    assert isinstance(exc, OSError) and isinstance(exc, SwapdError)
    assert exc.meaning and exc.meaning in str(exc) and errno.errorcode[err] in str(exc)


def test_eagain_with_progress_is_partial() -> None:
    exc = uffd_error(errno.EAGAIN, "UFFDIO_COPY", 8192, 16384)
    assert isinstance(exc, UffdPartialCopyError)
    assert exc.copied == 8192 and exc.length == 16384 and exc.errno == errno.EAGAIN
    pending = uffd_error(errno.EAGAIN, "UFFDIO_COPY", -errno.EAGAIN, 16384)
    assert isinstance(pending, UffdEventPendingError)
    assert not isinstance(pending, UffdPartialCopyError)


def test_client_gone_is_a_swapd_client_gone_error() -> None:
    exc = uffd_error(errno.ESRCH, "UFFDIO_ZEROPAGE")
    assert isinstance(exc, ClientGoneError) and isinstance(exc, ProcessGoneError)
    with pytest.raises(ClientGoneError):
        raise exc


def test_op_specific_meanings() -> None:
    assert "page cache" in uffd_error(errno.EFAULT, "UFFDIO_CONTINUE").meaning
    assert "source" in uffd_error(errno.EFAULT, "UFFDIO_COPY").meaning
    assert "another userfaultfd" in uffd_error(errno.EBUSY, "UFFDIO_REGISTER").meaning
    assert "USER_MODE_ONLY" in uffd_error(errno.EPERM, "userfaultfd").meaning


def test_generic_errors() -> None:
    assert type(kernel_error(errno.ESRCH, "pidfd_open")) is ProcessGoneError
    assert type(kernel_error(errno.EACCES, "open")) is KernelPermissionError
    exc = kernel_error(errno.EBADF, "pidfd_getfd", "the process has no fd 7")
    assert type(exc) is KernelError and exc.meaning == "the process has no fd 7"
    conv = from_oserror(FileNotFoundError(errno.ENOENT, "x"), "open")
    assert conv.errno == errno.ENOENT and conv.op == "open"
