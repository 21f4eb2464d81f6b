"""Directions files: the vectors that span a landscape, with what produced them (HDF5).

Layout (format ``gradvis-directions``)::

    /directions              (k, N) float32   the vectors, exactly as used for the plane and the projection
    /eigenvalues             (k,)   optional  Ritz values (Hessian eigenvectors)
    /residuals               (k,)   optional  ||H v - lambda v|| of each Ritz pair
    /explained_variance      (k,)   optional  PCA variance along each component
    /explained_variance_ratio (k,)  optional
    attrs: format, version, method, labels (JSON), normalization, center_iteration, config, provenance,
           runs (JSON: the run(s) the vectors belong to, see ``storage.runs``; absent in older files)
           skipped (JSON list of {iteration, reason}: non-finite checkpoints a PCA left out; absent in older files)

A user's own direction files (``.npy``, ``.npz``, HDF5, Li et al.'s direction files among them) are read by
:func:`load_directions` (the custom method of the directions step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ..core.layout import ParameterLayout
from . import runs as run_record
from .atomic import hdf5_output, reading
from .li_files import DIRECTION_KEYS, is_li_directions, read_tensor_group

FORMAT = "gradvis-directions"
VERSION = 1
_OPTIONAL = ("eigenvalues", "residuals", "explained_variance", "explained_variance_ratio")


@dataclass(frozen=True, eq=False)
class Directions:
    """A stack of directions in parameter space plus the metadata that labels plots."""

    vectors: np.ndarray
    method: str
    labels: tuple[str, ...] = ()
    normalization: str = "none"
    center_iteration: int | None = None
    eigenvalues: np.ndarray | None = None
    residuals: np.ndarray | None = None
    explained_variance: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    runs: run_record.Runs | None = None  # the run (a pair: A, B) the vectors belong to; None: not recorded
    skipped: list[dict[str, Any]] = field(default_factory=list)  # non-finite checkpoints left out (diverged)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def select(self, indices: list[int]) -> Directions:
        """The directions at ``indices`` (e.g. pick eigenvectors 0 and 2), metadata sliced alike."""
        bad = [i for i in indices if not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"direction indices {bad} out of range: the file holds {len(self)} (0..{len(self) - 1})")
        take = {name: None if getattr(self, name) is None else np.asarray(getattr(self, name))[indices]
                for name in _OPTIONAL}
        labels = tuple(self.labels[i] for i in indices) if self.labels else ()
        return Directions(self.vectors[indices], self.method, labels, self.normalization, self.center_iteration,
                          config=self.config, provenance=self.provenance, runs=self.runs, skipped=self.skipped,
                          **take)


def save_directions(directions: Directions, path: str | os.PathLike) -> None:
    """Write atomically."""
    with hdf5_output(path) as f:
        f.attrs.update({
            "format": FORMAT, "version": VERSION, "method": directions.method,
            "labels": json.dumps(list(directions.labels)), "normalization": directions.normalization,
            "center_iteration": -1 if directions.center_iteration is None else int(directions.center_iteration),
            "config": json.dumps(directions.config, sort_keys=True, default=str),
            "provenance": json.dumps(directions.provenance, sort_keys=True, default=str),
            "skipped": json.dumps(list(directions.skipped)),
        })
        if directions.runs is not None:
            f.attrs[run_record.ATTRIBUTE] = run_record.to_attribute(directions.runs)
        f.create_dataset("directions", data=np.asarray(directions.vectors, dtype=np.float32))
        for name in _OPTIONAL:
            value = getattr(directions, name)
            if value is not None:
                f.create_dataset(name, data=np.asarray(value, dtype=np.float64))


def load_directions_file(path: str | os.PathLike) -> Directions:
    """Read a file written by :func:`save_directions`."""
    with reading(path, "directions file"), h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a gradvis directions file (format attribute missing)")
        center = int(f.attrs["center_iteration"])
        return Directions(
            vectors=f["directions"][()],
            method=str(f.attrs["method"]),
            labels=tuple(json.loads(f.attrs["labels"])),
            normalization=str(f.attrs["normalization"]),
            center_iteration=None if center < 0 else center,
            config=json.loads(f.attrs["config"]),
            provenance=json.loads(f.attrs["provenance"]),
            runs=run_record.from_attribute(f.attrs.get(run_record.ATTRIBUTE)),
            skipped=json.loads(f.attrs.get("skipped", "[]")),
            **{name: f[name][()] for name in _OPTIONAL if name in f},
        )


# ------------------------------------------------------------------------------------- a user's own files
def _read_hdf5(path: str, keys: Sequence[str] | None, layout: ParameterLayout | None) -> np.ndarray:
    with h5py.File(path, "r") as f:
        if keys is None:
            names = list(f.keys())
            if is_li_directions(f):  # Li et al.'s direction file: the plane is xdirection, ydirection
                keys = [key for key in DIRECTION_KEYS if key in f]
            elif len(names) == 1:
                keys = names
            else:
                raise ValueError(f"{path}: contains {names}; name the direction(s) to read (--custom-key)")
        rows = []
        for key in keys:
            if key not in f:
                raise ValueError(f"{path}: no dataset or group {key!r} (has {list(f.keys())})")
            obj = f[key]
            if isinstance(obj, h5py.Group):
                # Li et al.'s direction files store one dataset per parameter tensor, named "0", "1", ...
                # in model order; concatenating them flattened gives the flat vector.
                rows.append(read_tensor_group(obj, f"{path}:{key}", layout)[None, :])
            else:
                value = np.asarray(obj[()])
                rows.append(value[None, :] if value.ndim == 1 else value)
        return rows[0] if len(rows) == 1 else np.concatenate(rows)


def load_directions(path: str | os.PathLike, dim: int, key: str | Sequence[str] | None = None,
                    layout: ParameterLayout | None = None) -> np.ndarray:
    """Load user directions from ``.npy``, ``.npz`` or HDF5 (``.h5``/``.hdf5``) as shape ``(k, dim)``.

    The file holds one flat vector (``(dim,)``) or a stack (``(k, dim)``); for ``.npz``/HDF5 with several
    entries, ``key`` names the one (or, a list, the ones, stacked in that order) to read. An HDF5 group of tensors
    named 0, 1, ... is one direction, its tensors concatenated in model order, as in Li et al.'s direction files,
    whose ``xdirection`` and ``ydirection`` are read as the plane when no key is given; with ``layout`` each
    tensor's shape is checked against its parameter's. Raises ``ValueError`` on a wrong length or non-finite
    entries.
    """
    path = os.fspath(path)
    keys = None if key is None else [key] if isinstance(key, str) else list(key)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if keys is not None:
            raise ValueError(f"{path}: a .npy file holds one array; a key ({keys}) applies to .npz and .h5 files")
        arr = np.load(path, allow_pickle=False)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.keys())
            if keys is None:
                if len(names) != 1:
                    raise ValueError(f"{path}: contains {names}; name the direction(s) to read (--custom-key)")
                keys = names
            missing = [k for k in keys if k not in names]
            if missing:
                raise ValueError(f"{path}: no array {missing[0]!r} (has {names})")
            parts = [np.asarray(z[k]) for k in keys]
            arr = parts[0] if len(parts) == 1 else np.concatenate([p[None, :] if p.ndim == 1 else p for p in parts])
    elif ext in (".h5", ".hdf5", ".hdf"):
        arr = _read_hdf5(path, keys, layout)
    else:
        raise ValueError(f"{path}: unknown direction file type {ext!r} (use .npy, .npz, .h5 or .hdf5)")

    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(
            f"{path}: direction has shape {arr.shape}, expected ({dim},) or (k, {dim}) for a model with "
            f"{dim} parameters; was it saved for a different model?"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: direction contains NaN or inf entries")
    return arr
