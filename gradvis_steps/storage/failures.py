"""What went wrong with a file, in words: filesystem errors (a full disk, a read-only or forbidden folder, a file
locked by another process) turned into one line naming the path and the cause, whether Python raised them or h5py
wrapped them in its own text (``... errno = 28, error message = 'No space left on device' ...``)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

#: errno -> the cause as the one error line says it; the failures of writing an output
WRITE_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}
#: errno of a file locked by another process (HDF5's file locking: ``unable to lock file, errno = 11``)
LOCKED = (errno.EAGAIN, errno.EWOULDBLOCK)

#: exit status of a step that could not write an output (BSD sysexits' EX_IOERR); bad input stays 2
EXIT_WRITE_FAILED = 74

_H5_ERRNO = re.compile(r"errno = (\d+)")
_H5_NAME = re.compile(r"(?:file)?name = '([^']*)'")
_STRERROR = {os.strerror(code).lower(): code for code in (*WRITE_CAUSES, *LOCKED)}


def error_number(error: BaseException) -> int | None:
    """The errno of ``error``: its own, or the one h5py's message quotes (h5py raises OSError or RuntimeError with
    HDF5's text, often without ``errno`` set), or the one whose ``strerror`` the message contains."""
    code = getattr(error, "errno", None)
    if isinstance(code, int):
        return code
    text = str(error)
    found = _H5_ERRNO.search(text)
    if found:
        return int(found.group(1))
    if not isinstance(error, OSError):  # a RuntimeError counts only with HDF5's errno
        return None
    lowered = text.lower()
    return next((value for message, value in _STRERROR.items() if message in lowered), None)


def write_cause(error: BaseException) -> str | None:
    """``no space left on device``, ``permission denied``, ... when ``error`` is a failure to write; else None."""
    if not isinstance(error, OSError | RuntimeError):
        return None
    return WRITE_CAUSES.get(error_number(error))  # type: ignore[arg-type]


def is_locked(error: BaseException) -> bool:
    """Whether ``error`` says the file is locked by another process (HDF5's ``unable to lock file``)."""
    return error_number(error) in LOCKED or "unable to lock file" in str(error).lower()


def named_path(error: BaseException) -> str | None:
    """The file an OSError (``filename``) or an h5py message (``name = '...'``) names, if any."""
    filename = getattr(error, "filename", None)
    if filename:
        return os.fsdecode(filename)
    found = _H5_NAME.search(str(error))
    return found.group(1) if found else None


def from_hdf5(error: BaseException) -> bool:
    """Whether ``error`` is HDF5's (h5py quotes HDF5's message: ``... errno = N, error message = '...'``). After a
    failed HDF5 write, closing the file or any object of it can crash the interpreter (HDF5 1.14: a segfault in
    ``H5VL_dataset_close``): such a process must end without touching HDF5 again."""
    return bool(_H5_ERRNO.search(str(error)))


class OutputError(Exception):
    """An output could not be written: the step ends with one line naming it and the cause (see ``cli.run``).

    ``abandon``: HDF5 saw the failed write; the process must exit without closing any HDF5 object."""

    def __init__(self, path: str | os.PathLike, cause: str, *, abandon: bool = False):
        super().__init__(f"{os.fspath(path)}: cannot write ({cause}){_HINTS.get(cause, '')}")
        self.path = os.fspath(path)
        self.cause = cause
        self.abandon = abandon


_HINTS = {
    "no space left on device": "; free some space and run again",
    "disk quota exceeded": "; free some space or raise the quota and run again",
    "read-only file system": "; write the results to a writable folder",
    "permission denied": "; make the folder writable for this user or write the results elsewhere",
}


#: errnos of a write that failed for want of space, whatever file the error names
SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def writing(target: str | os.PathLike, written: str | os.PathLike | None = None) -> Iterator[None]:
    """Around the writing of ``target``: an OSError (or h5py's RuntimeError) of a full disk, a read-only or forbidden
    folder becomes an :class:`OutputError` naming ``target`` (not the temporary file being written). ``written``:
    the temporary file or folder being filled; then a permission error naming another file (an input read inside
    the block) is left as it is."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        cause = write_cause(error)
        if cause is None:
            raise
        path = named_path(error)
        if (written is not None and path is not None and error_number(error) not in SPACE
                and not path.startswith(os.fspath(written))):
            raise
        raise OutputError(target, cause, abandon=from_hdf5(error)) from error


def is_hdf5_write_failure(error: BaseException | None) -> bool:
    """Whether ``error`` is HDF5's report of a failed write (a full disk, ...), after which no HDF5 object of that
    file may be closed."""
    return error is not None and write_cause(error) is not None and from_hdf5(error)


@contextlib.contextmanager
def hdf5_dealloc_failures() -> Iterator[list[BaseException]]:
    """Collect, instead of printing, the failed HDF5 writes that h5py reports only while it frees an object (an
    ignored exception in ``ObjectID.__dealloc__``, its traceback printed through ``sys.excepthook`` first): the
    caller checks the list before its next flush or close, the calls that crash after such a failure."""
    caught: list[BaseException] = []
    unraisable_before, except_before = sys.unraisablehook, sys.excepthook

    def unraisable(info: Any) -> None:
        if is_hdf5_write_failure(info.exc_value):
            caught.append(info.exc_value)
        else:
            unraisable_before(info)

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if is_hdf5_write_failure(value):
            caught.append(value)
        else:
            except_before(kind, value, tb)

    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    try:
        yield caught
    finally:
        sys.unraisablehook, sys.excepthook = unraisable_before, except_before


def hard_exit(status: int) -> None:
    """Exit without the interpreter's clean-up (no HDF5 object is closed): after a failed HDF5 write."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
