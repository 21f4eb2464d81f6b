"""Li et al.'s loss-landscape files (tomgoldstein/loss-landscape), read and written with their key names.

Direction files: HDF5 groups ``xdirection`` (and ``ydirection`` for a plane), each one dataset per parameter tensor
named ``0``, ``1``, ... in the model's parameter order (their ``h5_util.write_list``). :func:`read_li_directions`
turns them into the flat ``(k, N)`` vectors gradvis uses, checking every tensor's shape against the layout.

Surface files: ``xcoordinates`` (and ``ycoordinates``), ``train_loss`` and ``train_acc`` (``test_loss``/``test_acc``
for a test set). Their 2D arrays are filled in the order of ``numpy.meshgrid(x, y)``, so value ``[j, i]`` is at
``(x[i], y[j])``: ``[y, x]``, the transpose of gradvis's ``loss[i, j]`` (``[x, y]``). Their accuracy is a percentage
(``100 * correct / total``), gradvis's a fraction. :func:`write_li_surface` and :func:`read_li_surface` convert
both, so their ``plot_2D.py`` and ``h52vtp.py`` read a gradvis landscape and gradvis's plots read theirs.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from ..core.grid import LandscapeResult
from ..core.layout import ParameterLayout
from .atomic import hdf5_output, reading

__all__ = ["DIRECTION_KEYS", "is_li_directions", "is_li_surface", "read_li_directions", "read_li_surface",
           "write_li_surface"]

_SETS = ("train", "test")

#: the groups of a Li et al. direction file, in the order of the plane's axes
DIRECTION_KEYS = ("xdirection", "ydirection")


def is_li_directions(file: Any) -> bool:
    """Whether an open HDF5 file is a Li et al. direction file (an ``xdirection`` group of numbered tensors)."""
    return isinstance(file.get("xdirection"), h5py.Group)


def read_tensor_group(group: Any, source: str, layout: ParameterLayout | None) -> np.ndarray:
    """One direction stored as a group of tensors ``0``, ``1``, ... (model order), flattened and concatenated;
    with a ``layout``, each tensor's shape must be its parameter's (else one line naming both)."""
    try:
        names = sorted(group.keys(), key=int)
    except ValueError:
        raise ValueError(f"{source} is a group whose members {list(group.keys())[:5]} are not numbered tensors "
                         "0, 1, ...") from None
    tensors = [np.asarray(group[name][()]) for name in names]
    if layout is not None:
        specs = list(layout)
        if len(tensors) != len(specs):
            hint = (" (a 'states' direction file also holds the buffers, batch-norm statistics: write it with "
                    "dir_type weights)" if len(tensors) > len(specs) else "")
            raise ValueError(f"{source} holds {len(tensors)} tensors, the model has {len(specs)} parameter "
                             f"tensors{hint}")
        for name, tensor, spec in zip(names, tensors, specs, strict=True):
            if tuple(tensor.shape) != tuple(spec.shape):
                raise ValueError(f"{source}/{name} has shape {tuple(tensor.shape)}, but parameter {name} of the "
                                 f"model ({spec.name}) has {tuple(spec.shape)}; was it written for this model?")
    return np.concatenate([t.ravel() for t in tensors])



def read_li_directions(path: str | os.PathLike, layout: ParameterLayout | None = None) -> np.ndarray:
    """The ``xdirection`` (and ``ydirection``) of a Li et al. direction file as a ``(k, N)`` stack, x first."""
    with reading(path, "Li et al. direction file"), h5py.File(path, "r") as f:
        keys = [key for key in DIRECTION_KEYS if key in f]
        if not keys or keys[0] != "xdirection":
            raise ValueError(f"{os.fspath(path)}: not a Li et al. direction file (no 'xdirection' group; has "
                             f"{list(f.keys())})")
        return np.stack([read_tensor_group(f[key], f"{os.fspath(path)}:{key}", layout) for key in keys])


def is_li_surface(file: h5py.File) -> bool:
    """Whether an open HDF5 file is a Li et al. surface file (``xcoordinates`` and a ``train_loss`` or
    ``test_loss``, no gradvis format attribute)."""
    return "format" not in file.attrs and "xcoordinates" in file and any(f"{s}_loss" in file for s in _SETS)


def write_li_surface(result: LandscapeResult, path: str | os.PathLike, split: str = "train") -> None:
    """Write a 1D or 2D landscape as a Li et al. surface file (``<split>_loss``/``<split>_acc`` in their ``[y, x]``
    layout, accuracy in percent), atomically."""
    if split not in _SETS:
        raise ValueError(f"split {split!r} is not one of {_SETS}")
    if result.ndim not in (1, 2):
        raise ValueError(f"a Li et al. surface file holds a 1D or 2D landscape, got {result.ndim}D")
    # gradvis stores [x, y]; theirs is [y, x] (numpy.meshgrid(x, y) order). Unevaluated points: their -1.
    loss = np.where(result.filled, result.loss, -1.0)
    accuracy = np.where(result.filled, 100.0 * result.accuracy, -1.0)
    with hdf5_output(path) as f:
        f["xcoordinates"] = result.axes[0]
        if result.ndim == 2:
            f["ycoordinates"] = result.axes[1]
            loss, accuracy = loss.T, accuracy.T
        f[f"{split}_loss"] = loss
        f[f"{split}_acc"] = accuracy


def read_li_surface(path: str | os.PathLike, split: str | None = None) -> LandscapeResult:
    """A Li et al. surface file as a :class:`LandscapeResult` (``[x, y]``, accuracy as a fraction, their unfilled
    ``-1`` points not filled); ``split``: ``train`` (default when present) or ``test``."""
    with reading(path, "Li et al. surface file"), h5py.File(path, "r") as f:
        if not is_li_surface(f):
            raise ValueError(f"{os.fspath(path)}: not a Li et al. surface file (needs xcoordinates and train_loss or "
                             f"test_loss; has {list(f.keys())})")
        split = split or next(s for s in _SETS if f"{s}_loss" in f)
        if f"{split}_loss" not in f:
            raise ValueError(f"{os.fspath(path)} has no {split}_loss (has {list(f.keys())})")
        axes = [np.asarray(f["xcoordinates"][()], dtype=np.float64)]
        if "ycoordinates" in f:
            axes.append(np.asarray(f["ycoordinates"][()], dtype=np.float64))
        loss = np.asarray(f[f"{split}_loss"][()], dtype=np.float64)
        accuracy = (np.asarray(f[f"{split}_acc"][()], dtype=np.float64) if f"{split}_acc" in f
                    else np.full(loss.shape, np.nan))
    if len(axes) == 2:
        # Their arrays are filled in meshgrid(x, y) order whatever shape they were created with: read them flat
        # as [y, x], then transpose to gradvis's [x, y].
        shape = (axes[1].size, axes[0].size)
        if loss.size != shape[0] * shape[1]:
            raise ValueError(f"{os.fspath(path)}: {split}_loss has {loss.size} values for a {axes[0].size} x "
                             f"{axes[1].size} grid")
        loss, accuracy = loss.reshape(shape).T, accuracy.reshape(shape).T
    filled = loss != -1.0  # their marker of a point not yet evaluated
    loss = np.where(filled, loss, np.nan)
    accuracy = np.where(filled & (accuracy != -1.0), accuracy / 100.0, np.nan)
    return LandscapeResult(axes=tuple(axes), loss=loss, accuracy=accuracy, filled=filled, method="custom",
                           labels=tuple(f"{axis} direction (Li et al. file)" for axis in "xy"[:len(axes)]),
                           normalization="filter", config={"li_surface": os.fspath(path), "split": split})
