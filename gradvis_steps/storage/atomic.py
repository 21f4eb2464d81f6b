"""Atomic file writes: write beside the target, then ``os.replace``, so no reader sees half a file.

A temporary file is named ``.<target name>.tmp-XXXXXXXX<suffix>``; while it is written its writer holds a POSIX
lock (``lockf``) on a sidecar ``.<target name>.tmp-XXXXXXXX.lock``. The first write of a process into a folder
removes the temporaries whose sidecar is missing or unlocked (left by a step that was killed or crashed: a lock dies
with its process, on any host sharing the folder). The lock sits on its own file because POSIX drops a process's
locks on a file whenever the process closes any descriptor of it, and HDF5 (or ``Path.write_text``) opens and closes
the temporary file itself: a lock on the temporary would be gone while it is written (measured), and a second step
writing in the same folder would remove a live file."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .failures import (
    EXIT_WRITE_FAILED,
    OutputError,
    hard_exit,
    hdf5_dealloc_failures,
    is_hdf5_write_failure,
    is_locked,
    write_cause,
    writing,
)

TEMP_MARK = ".tmp-"
LOCK_SUFFIX = ".lock"
_TEMPORARY = re.compile(r"^(\..+\.tmp-[a-z0-9_]{8})(\.[A-Za-z0-9]+)?$")  # tempfile.mkstemp's 8 random characters
_LIVE: set[str] = set()  # stems of the temporaries this process writes: its own POSIX locks do not exclude it
_SWEPT: set[str] = set()  # folders whose stale temporaries this process removed
_ABANDONED: list[Any] = []  # HDF5 files left open after a failed write: closing them could crash the interpreter


class FileUnavailable(ValueError):
    """A file that may well be fine cannot be read now (locked by another process, permission denied): never a
    reason to start over and overwrite it."""


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success move it onto ``target``. A full disk or a read-only
    folder ends in an :class:`~.failures.OutputError` naming ``target``; the temporary file is removed either way."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent)
    with claimed_temporary(target.parent, target.name, suffix or ".tmp", target) as (tmp_path, _):
        with writing(target, written=tmp_path):
            yield tmp_path
        with writing(target):
            os.replace(tmp_path, target)


@contextlib.contextmanager
def claimed_temporary(folder: Path, name: str, suffix: str, reported: Path) -> Iterator[tuple[Path, int]]:
    """Create ``.<name>.tmp-XXXXXXXX<suffix>`` in ``folder`` (readable as an ordinary result: mode 0666 less the
    umask) and its locked sidecar; yield the path and an open descriptor of the file. Both go when the block ends
    (the file only if it is still there: the caller may have renamed it). Failures to create name ``reported``."""
    with writing(reported):
        lock_fd, lock = _locked_sidecar(folder, name)
    stem = lock[: -len(LOCK_SUFFIX)]
    path, fd = Path(stem + suffix), -1
    try:
        with writing(reported):
            umask = os.umask(0)
            os.umask(umask)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666 & ~umask)
        yield path, fd
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(lock_fd)
        _LIVE.discard(stem)


def _locked_sidecar(folder: Path, name: str) -> tuple[int, str]:
    """Create ``.<name>.tmp-XXXXXXXX.lock`` in ``folder`` and lock it (``lockf``) for as long as its fd is open. A
    sweep in another process may remove it in the instant before the lock is taken: then it is made again."""
    while True:
        fd, lock = tempfile.mkstemp(dir=folder, prefix=f".{name}{TEMP_MARK}", suffix=LOCK_SUFFIX)
        _LIVE.add(lock[: -len(LOCK_SUFFIX)])
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no locks on this filesystem: the file is merely not protected (no sweep can lock it either)
            return fd, lock
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd, lock
        os.close(fd)
        _LIVE.discard(lock[: -len(LOCK_SUFFIX)])


def remove_stale_temporaries(folder: str | os.PathLike, *, again: bool = False) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` whose writer is gone (a step killed or crashed
    while writing left them: their sidecar is missing or unlocked), once per process and folder unless ``again``;
    returns the temporary files removed (their sidecars go too, unreported)."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _SWEPT and not again:
        return []
    _SWEPT.add(key)
    stems: dict[str, list[str]] = {}
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if match:
                stems.setdefault(os.path.join(folder, match[1]), []).append(entry.path)
    removed = []
    for stem, paths in stems.items():
        lock = stem + LOCK_SUFFIX
        if stem in _LIVE or (lock in paths and not _unlocked(lock)):
            continue
        for path in sorted(paths, key=lambda p: p == lock):  # the sidecar last: a file never outlives its lock
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                if path != lock:
                    removed.append(Path(path))
                    print(f"removed {path}: a temporary file left by an earlier run that stopped while writing",
                          file=sys.stderr)
    return removed


def _unlocked(path: str) -> bool:
    """Whether no process holds ``path`` locked (we can take the lock: it is released when we close)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it takes a file (a few bytes written, then removed), after removing the
    stale temporaries there: a read-only or full folder fails now, in one line, not after hours of computing."""
    folder = Path(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
    with claimed_temporary(folder, "write-test", ".tmp", folder) as (_, fd), writing(folder):
        os.write(fd, b"\0" * 4096)
    return folder


@contextlib.contextmanager
def hdf5_output(target: str | os.PathLike) -> Iterator[Any]:
    """Yield a new ``h5py.File`` that appears at ``target`` when the block ends (atomically). After a failed write
    the file is left open, never closed (HDF5 can crash the interpreter closing it), and the error raised as an
    :class:`~.failures.OutputError` whose ``abandon`` tells the caller to end the process (``cli.run`` does)."""
    import h5py

    with atomic_path(target, ".h5") as tmp, hdf5_dealloc_failures() as lost:
        file = h5py.File(tmp, "w")
        try:
            yield file
            if lost:  # a write that failed while h5py freed an object: closing would crash
                raise lost[0]
        except BaseException as error:
            if isinstance(error, OutputError) and error.abandon or is_hdf5_write_failure(error) or lost:
                abandon(file)
            else:
                file.close()
            raise
        try:
            file.close()
        except BaseException:
            abandon(file)
            raise


def abandon(file: Any) -> None:
    """Keep an HDF5 file whose write failed referenced for good, so it is never closed or freed, not even when the
    interpreter exits: HDF5 1.14 can crash the interpreter doing either after a failed write (measured: a segfault
    in ``H5VL_dataset_close`` at exit). A step then ends at once (``failures.hard_exit``); a library user's process
    lives on with the file open."""
    if file is None:
        return
    if not _ABANDONED:
        atexit.register(_exit_before_hdf5_cleanup)
    _ABANDONED.append(file)


def _exit_before_hdf5_cleanup() -> None:
    """At the exit of a process that abandoned an HDF5 file (a library user's: a step has ended already), end it
    before the interpreter and HDF5 free their objects, which crashes. The status is 74 (EX_IOERR) whatever the
    process meant to return (unknown here): an output was lost."""
    hard_exit(EXIT_WRITE_FAILED)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on success it replaces ``target`` (which appears whole)."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.partial")
    with writing(target):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    try:
        with writing(target, written=staging):
            yield staging
        with writing(target):
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def reading(path: str | os.PathLike, kind: str) -> Iterator[None]:
    """Around the reading of an HDF5 input: a missing file, or one that is empty, truncated or not HDF5 (h5py's
    OSError, or the KeyError of a missing part), becomes one line naming the file and what it should be; a file
    locked by another process or not readable for this user raises :class:`FileUnavailable` saying so."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{kind} {os.fspath(path)} does not exist")
    try:
        yield
    except (OSError, KeyError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        if is_locked(error):
            raise FileUnavailable(f"{os.fspath(path)}: the {kind} is locked by another process (is another run "
                                  "using this folder?)") from None
        if write_cause(error) == "permission denied":
            raise FileUnavailable(f"{os.fspath(path)}: cannot read the {kind} (permission denied)") from None
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{os.fspath(path)}: not a readable {kind} (empty, truncated or another format: {detail})"
                         ) from None


@contextlib.contextmanager
def unless_unreadable(path: str | os.PathLike, kind: str) -> Iterator[None]:
    """Around the loading of a partial file to resume from: one that is unreadable (empty, truncated, another
    format, the ValueError of :func:`reading`) is reported in one warning line and skipped, so the caller starts
    over; a locked or forbidden one (:class:`FileUnavailable`) still stops the step."""
    try:
        yield
    except FileUnavailable:
        raise
    except (OSError, ValueError, KeyError) as error:
        if isinstance(error, OSError) and (is_locked(error) or write_cause(error) == "permission denied"):
            raise
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        if os.fspath(path) not in detail:
            detail = f"{os.fspath(path)}: not a readable {kind} ({detail})"
        print(f"warning: {detail}; starting over", file=sys.stderr)


def write_json(target: str | os.PathLike, data: object) -> None:
    """Write JSON atomically (sorted keys, indented: diff-friendly provenance)."""
    with atomic_path(target, ".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
