"""One run at a time per results folder: ``<results>/.gradvis.lock``, whatever the working directory.

Snakemake locks its working directory (``.snakemake/locks``), not the outputs: two runs on one results folder from
two folders both ran the same jobs and removed each other's files. The workflow's main process takes this lock
before its first job (``onstart``) and gives it back when it ends; jobs (SLURM, subprocesses) never touch it.

The lock is an exclusive ``flock`` on the file, held while the run lives, so the kernel releases it when the run
dies however it dies; the file records who holds it (host, PID, process start time, start, working directory) for
the message of a second run, and is removed at a clean exit. A file left by a run that died is taken over with a
warning when its PID is gone from this host. On a file system without ``flock`` the record alone decides (a
narrow race between two runs started in the same instant remains). A holder on another host is never presumed
dead: ``gradvis unlock`` or ``--config force_unlock=true`` clears it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

LOCK_NAME = ".gradvis.lock"
HOW_TO_CLEAR = "`gradvis unlock` (or snakemake --config force_unlock=true) clears it"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockError(Exception):
    """The results folder is in use by another run (or its lock cannot be taken): one line for the user."""


@dataclass
class Held:
    """The lock this process holds on one results folder."""

    path: Path
    fd: int
    token: str


_HELD: dict[Path, Held] = {}  # per process: the Snakefile may be read more than once


def lock_path(results: str | os.PathLike[str]) -> Path:
    return Path(results).absolute() / LOCK_NAME


def _me(token: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _started(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd(), "token": token}


def _started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        return -1.0  # exists, but cannot be inspected: alive


def _read(path: Path) -> dict[str, Any] | None:
    """The record in a lock file, None when there is none (no file, empty, or not a record)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        record = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def alive(record: dict[str, Any]) -> bool | None:
    """Whether the run a record names is running: True/False on this host, None on another (cannot tell)."""
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    started = _started(pid)
    if started is None:
        return False
    recorded = record.get("pid_started")
    # the PID was reused by another process when that one started later than the recorded one
    return not (isinstance(recorded, (int, float)) and started > 0 and abs(started - recorded) > 1.0)


def describe(record: dict[str, Any]) -> str:
    return (f"host {record.get('host', '?')}, PID {record.get('pid', '?')}, started {record.get('started', '?')} "
            f"in {record.get('cwd', '?')}")


def holder(results: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of another run that holds (or seems to hold) the lock of ``results``, else None. Reads only."""
    path = lock_path(results)
    record = _read(path)
    if record is None or path in _HELD or alive(record) is False:
        return None
    return record


def in_use_message(results: str | os.PathLike[str], record: dict[str, Any]) -> str:
    return (f"results folder {Path(results).absolute()} is in use by another run ({describe(record)}); wait for it "
            f"to end, or use another results folder; if that run is over, {HOW_TO_CLEAR}")


def acquire(results: str | os.PathLike[str], force: bool = False) -> list[str]:
    """Take the lock of ``results`` for this process (until it exits or :func:`release`); returns warnings (a
    stale lock taken over). Raises LockError naming the folder and the holder's host and PID when another run
    holds it; ``force`` takes it anyway."""
    path = lock_path(results)
    if path in _HELD:
        return []
    warnings: list[str] = []
    for _ in range(10):  # another process may remove or replace the file between open and flock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise LockError(f"cannot lock results folder {path.parent}: {_cause(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _read(path) or {}
            os.close(fd)
            if not force:
                raise LockError(in_use_message(results, record)) from None
            warnings.append(f"warning: took the lock of {path.parent} from a run that holds it ({describe(record)}) "
                            "as force_unlock asks")
            _unlink(path)
            continue
        except OSError as error:
            if error.errno not in _NO_FLOCK:
                os.close(fd)
                raise LockError(f"cannot lock results folder {path.parent}: {_cause(error)}") from None
            pass  # no flock on this file system: the record alone decides
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # removed (a run released it) or replaced between open and flock: try the new one
            os.close(fd)
            continue
        record = _read(path)
        if record is not None:
            # a record without the flock: its run died, or it runs where flock is not shared (another host over NFS
            # mounted with local locks, a file system without flock): only a dead PID on this host is taken over
            if alive(record) is not False and not force:
                os.close(fd)
                raise LockError(in_use_message(results, record))
            why = "as force_unlock asks" if force else "which ended without releasing it"
            warnings.append(f"warning: took over the lock of {path.parent} from a run {why} ({describe(record)})")
        token = uuid.uuid4().hex
        data = json.dumps(_me(token), sort_keys=True).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as error:
            os.close(fd)
            raise LockError(f"cannot lock results folder {path.parent}: {_cause(error)}") from None
        _HELD[path] = Held(path, fd, token)
        return warnings
    raise LockError(f"cannot lock results folder {path.parent}: its lock file keeps changing (another run starting?)")


def release(results: str | os.PathLike[str] | None = None) -> None:
    """Give back the lock(s) this process holds (all, or that of ``results``): the file is removed while still
    locked, unless another run took it over meanwhile (force_unlock)."""
    paths = list(_HELD) if results is None else [lock_path(results)]
    for path in paths:
        held = _HELD.pop(path, None)
        if held is None:
            continue
        record = _read(path)
        if record is not None and record.get("token") == held.token:
            _unlink(path)
        try:
            os.close(held.fd)
        except OSError:
            pass


def clear(results: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Remove the lock file of ``results`` (``gradvis unlock``); returns the record it held, if any."""
    path = lock_path(results)
    record = _read(path)
    _unlink(path)
    return record


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _cause(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


if __name__ == "__main__":  # python results_lock.py RESULTS: show who holds it
    found = _read(lock_path(sys.argv[1]))
    print(describe(found) if found else "not locked")
