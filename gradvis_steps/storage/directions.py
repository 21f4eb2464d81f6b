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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from . import runs as run_record
from .atomic import hdf5_output, reading

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
