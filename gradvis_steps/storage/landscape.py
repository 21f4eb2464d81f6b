"""Landscape results in HDF5 (named arrays, readable with plain h5py) and legacy-VTK export for ParaView.

HDF5 layout (format ``gradvis-landscape``, version 1); grid arrays have shape ``(len(x), len(y))`` with
``loss[i, j]`` at ``(x[i], y[j])`` (attribute ``indexing = "ij"``); 1D landscapes have only ``x``::

    /x, /y                       coordinates per axis (coefficients of direction 1, 2)
    /loss, /accuracy             grid values, NaN where not evaluated
    /filled                      bool, True where evaluated (a run resumes at the False points)
    /trajectory/coefficients     (n, k) least-squares coordinates of the checkpoints
    /trajectory/residuals        (n,) distance of each checkpoint from the plane
    /trajectory/projected_loss   (n,) loss at the projected points (Algorithm 1's z_i), and _accuracy
    /trajectory/checkpoint_loss  (n,) true loss at each checkpoint, and checkpoint_accuracy
    /trajectory/iterations       (n,) training iteration of each checkpoint
    /directions                  attrs method, labels (JSON), normalization; datasets explained_variance,
                                 explained_variance_ratio (PCA) or eigenvalues (Hessian eigenvectors)
    attrs: format, version, indexing, config (JSON), provenance (JSON), center_iteration (training iteration
           of the checkpoint at the origin; absent when unknown, as in older files: read as None, "the last"),
           runs (JSON: the run, or the pair A, B of an interpolation, see ``storage.runs``; absent in older files)
           non_finite_points (evaluated grid points whose loss is NaN or inf: overflow, masked in plots),
           skipped (JSON list of {iteration, reason}: non-finite checkpoints left out, their values NaN)

Files are written atomically: a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import h5py
import numpy as np

from ..core.grid import LandscapeResult
from . import runs
from .atomic import atomic_path, hdf5_output, reading
from .li_files import is_li_surface, read_li_surface

__all__ = ["FORMAT", "VERSION", "save_landscape", "load_landscape", "export_vtk"]

FORMAT = "gradvis-landscape"
VERSION = 1
_AXES = ("x", "y", "z")
_TRAJ = {  # HDF5 name under /trajectory -> LandscapeResult field
    "coefficients": "trajectory",
    "residuals": "residuals",
    "projected_loss": "trajectory_loss",
    "projected_accuracy": "trajectory_accuracy",
    "checkpoint_loss": "checkpoint_loss",
    "checkpoint_accuracy": "checkpoint_accuracy",
    "iterations": "iterations",
}
_DIRS = ("explained_variance", "explained_variance_ratio", "eigenvalues")


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str) -> None:
    with atomic_path(path, suffix) as tmp:
        write(str(tmp))


def save_landscape(result: LandscapeResult, path: str | os.PathLike) -> None:
    """Write ``result`` to an HDF5 file at ``path`` (atomically; an existing file is replaced)."""
    if result.ndim > len(_AXES):
        raise ValueError(f"at most {len(_AXES)} axes can be stored, got {result.ndim}")
    with hdf5_output(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["indexing"] = "ij"
        f.attrs["config"] = json.dumps(result.config, default=str)
        f.attrs["provenance"] = json.dumps(result.provenance, default=str)
        if result.center_iteration is not None:
            f.attrs["center_iteration"] = int(result.center_iteration)
        if result.runs is not None:
            f.attrs[runs.ATTRIBUTE] = runs.to_attribute(result.runs)
        f.attrs["non_finite_points"] = result.non_finite_points
        f.attrs["skipped"] = json.dumps(list(result.skipped))
        for name, ax in zip(_AXES, result.axes, strict=False):
            f.create_dataset(name, data=ax)
        f.create_dataset("loss", data=result.loss)
        f.create_dataset("accuracy", data=result.accuracy)
        f.create_dataset("filled", data=result.filled)
        traj = f.create_group("trajectory")
        for h5name, attr in _TRAJ.items():
            v = getattr(result, attr)
            if v is not None:
                traj.create_dataset(h5name, data=v)
        dirs = f.create_group("directions")
        dirs.attrs["method"] = result.method
        dirs.attrs["labels"] = json.dumps(list(result.labels))
        dirs.attrs["normalization"] = result.normalization
        for name in _DIRS:
            v = getattr(result, name)
            if v is not None:
                dirs.create_dataset(name, data=v)


def _str(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def load_landscape(path: str | os.PathLike) -> LandscapeResult:
    """Read a file written by :func:`save_landscape`, or a Li et al. surface file (:mod:`.li_files`: their
    ``[y, x]`` grids transposed, accuracy as a fraction)."""
    with reading(path, "landscape file"), h5py.File(path, "r") as f:
        li_surface = is_li_surface(f)
    if li_surface:
        return read_li_surface(path)
    with reading(path, "landscape file"), h5py.File(path, "r") as f:
        if _str(f.attrs.get("format", "")) != FORMAT:
            raise ValueError(f"{os.fspath(path)}: not a {FORMAT} file")
        if int(f.attrs.get("version", 0)) > VERSION:
            raise ValueError(f"{os.fspath(path)}: format version {f.attrs['version']} is newer than {VERSION}")
        axes = tuple(f[name][()] for name in _AXES if name in f)
        kw: dict = {}
        for h5name, attr in _TRAJ.items():
            if h5name in f["trajectory"]:
                kw[attr] = f["trajectory"][h5name][()]
        if "center_iteration" in f.attrs:
            kw["center_iteration"] = int(f.attrs["center_iteration"])
        kw["runs"] = runs.from_attribute(f.attrs.get(runs.ATTRIBUTE))
        d = f["directions"]
        for name in _DIRS:
            if name in d:
                kw[name] = d[name][()]
        return LandscapeResult(
            axes=axes,
            loss=f["loss"][()],
            accuracy=f["accuracy"][()],
            filled=f["filled"][()],
            method=_str(d.attrs["method"]),
            labels=tuple(json.loads(_str(d.attrs["labels"]))),
            normalization=_str(d.attrs["normalization"]),
            config=json.loads(_str(f.attrs["config"])),
            provenance=json.loads(_str(f.attrs["provenance"])),
            skipped=json.loads(_str(f.attrs.get("skipped", "[]"))),
            **kw,
        )


def export_vtk(
    result: LandscapeResult,
    path: str | os.PathLike,
    *,
    fill_value: float | None = None,
    log_z: bool = False,
    z_scale: float = 1.0,
) -> None:
    """Write the 2D loss surface as a legacy-VTK ASCII ``STRUCTURED_GRID`` (opens in ParaView).

    Points are ``(x, y, z_scale * loss)`` (``log10(loss)`` if ``log_z``) with x varying fastest; point
    scalars ``loss`` (same values as z before scaling) and ``valid`` (1 where the loss was finite).
    Non-finite values are replaced by ``fill_value``, by default the largest finite value (a flat
    plateau at the top of the surface; threshold on ``valid`` to hide it), or 0 if none is finite.
    """
    if result.ndim != 2:
        raise ValueError(f"VTK export needs a 2D landscape, got {result.ndim}D")
    x, y = result.axes
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(result.loss) if log_z else np.array(result.loss, dtype=np.float64)
    valid = np.isfinite(z)
    if fill_value is None:
        fill_value = float(z[valid].max()) if valid.any() else 0.0
    z = np.where(valid, z, fill_value)
    nx, ny = x.size, y.size
    # VTK structured points run with the first index fastest: point (i, j) is number i + nx * j.
    X, Y = np.meshgrid(x, y, indexing="ij")

    def order(a: np.ndarray) -> np.ndarray:  # (nx, ny) "ij" array -> flat with x fastest
        return a.T.ravel()

    pts = np.column_stack([order(X), order(Y), z_scale * order(z)])
    name = "log10_loss" if log_z else "loss"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write("# vtk DataFile Version 3.0\n")
            fh.write(f"gradvis loss landscape ({result.method}); non-finite {name} -> {fill_value!r}\n")
            fh.write("ASCII\nDATASET STRUCTURED_GRID\n")
            fh.write(f"DIMENSIONS {nx} {ny} 1\n")
            fh.write(f"POINTS {nx * ny} double\n")
            np.savetxt(fh, pts, fmt="%.10g")
            fh.write(f"POINT_DATA {nx * ny}\n")
            fh.write(f"SCALARS {name} double 1\nLOOKUP_TABLE default\n")
            np.savetxt(fh, order(z), fmt="%.10g")
            fh.write("SCALARS valid int 1\nLOOKUP_TABLE default\n")
            np.savetxt(fh, order(valid).astype(np.int64), fmt="%d")

    _atomic_write(path, write, ".vtk")
