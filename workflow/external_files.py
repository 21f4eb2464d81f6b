"""The files behind external runs (``external_runs:``): which files a checkpoint run imports, and a fingerprint of
them that makes Snakemake rerun a run's jobs when one of its files changes.

A run's identity in its results is the digest of its files' contents (the import step records each file's sha256
in the run config; a trajectory file is copied byte for byte), so ``Trajectory.run`` changes with them. Snakemake
itself reruns a job when an input is newer than its output; the fingerprint (each file's path, size and
modification time in nanoseconds, a ``params`` value of the rule) also catches a file replaced by an older one
(``cp -p``, ``rsync -t``, a restored backup) and a file added to or removed from a glob, without reading the
files each time the workflow loads.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def checkpoint_files(spec: dict[str, Any]) -> list[tuple[int | None, Path]]:
    """``(iteration, file)`` of each checkpoint file of a run declared by ``checkpoints`` (``experiments.
    external_run``'s spec), in the import step's order. Without the package (Snakemake outside its environment)
    the patterns expanded by ``glob``, iterations unknown: the job's import step lists them itself."""
    try:
        from gradvis_steps.import_checkpoints import find_checkpoints
    except ImportError:
        found = [Path(p) for pattern in spec["checkpoints"] for p in _expand(pattern)]
        return [(None, path) for path in dict.fromkeys(found)]
    return [(int(iteration), Path(path)) for iteration, path in find_checkpoints(list(spec["checkpoints"]),
                                                                                   spec["iterations"])]


def run_files(spec: dict[str, Any]) -> list[Path]:
    """The files an external run is made from: its trajectory file, or its checkpoint files."""
    if spec["kind"] == "trajectory":
        return [Path(spec["trajectory"])]
    return [path for _, path in checkpoint_files(spec)]


def fingerprint(paths: list[Path]) -> str:
    """A digest of the files' paths, sizes and modification times (ns); a missing file counts as missing."""
    entries = []
    for path in paths:
        try:
            stat = os.stat(path)
            entries.append([os.fspath(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            entries.append([os.fspath(path), None, None])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def missing_files(spec: dict[str, Any]) -> str | None:
    """What of a run's declared files does not exist (one phrase naming the path), without the package: a
    trajectory file that is not a file, a checkpoint entry (file, folder or pattern) that matches nothing."""
    if spec["kind"] == "trajectory":
        path = spec["trajectory"]
        return None if Path(path).is_file() else f"trajectory {path} does not exist (or is not a file)"
    for pattern in spec["checkpoints"]:
        if not _expand(pattern):
            return f"checkpoints {pattern} matches no file"
    return None


def _expand(pattern: str) -> list[str]:
    """A path as it is where it exists (a name may hold ``[``), else the files its glob pattern matches."""
    return [pattern] if os.path.exists(pattern) else sorted(glob.glob(pattern))
