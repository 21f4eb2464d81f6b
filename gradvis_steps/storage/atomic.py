"""Atomic file writes: write beside the target, then ``os.replace``, so no reader sees half a file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success move it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files a group can read
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on success it replaces ``target`` (which appears whole)."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def reading(path: str | os.PathLike, kind: str) -> Iterator[None]:
    """Around the reading of an HDF5 input: a missing file, or one that is empty, truncated or not HDF5 (h5py's
    OSError, or the KeyError of a missing part), becomes one line naming the file and what it should be."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{kind} {os.fspath(path)} does not exist")
    try:
        yield
    except (OSError, KeyError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{os.fspath(path)}: not a readable {kind} (empty, truncated or another format: {detail})"
                         ) from None


def write_json(target: str | os.PathLike, data: object) -> None:
    """Write JSON atomically (sorted keys, indented: diff-friendly provenance)."""
    with atomic_path(target, ".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
