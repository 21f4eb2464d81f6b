"""Provenance recorded in every result file: config hash, package versions, command line, host, time."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from . import __version__

#: the settings of the output folder a step writes into (``--folder-settings FILE``, read by ``cli.run``)
FOLDER_SETTINGS: dict[str, Any] = {}

_PACKAGES = ("numpy", "scipy", "torch", "tensorflow", "tensorflow-cpu", "keras", "h5py", "mpi4py", "matplotlib",
             "snakemake")


def config_hash(config: dict[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of a config (same settings -> same hash)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks: what an input's content was."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"gradvis": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Everything needed to tell how a result was produced."""
    return {
        "config_hash": config_hash(config),
        "versions": package_versions(),
        "command": sys.argv,
        "host": socket.gethostname(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"settings": dict(FOLDER_SETTINGS)} if FOLDER_SETTINGS else {}),
        **extra,
    }
