"""Raw (not yet normalized) visualization directions: seeded random Gaussian vectors and user files.

Section 2.1 of the GradVis paper: "The directional vector d is either a random Gaussian vector, a custom
vector provided by the user or it is calculated using principal component analysis (PCA)". PCA lives in
:mod:`.pca`, Hessian eigenvectors come from the Lanczos code; this module covers the other two. All
vectors are flat numpy arrays of length ``layout.size``; normalize them with :mod:`.normalization`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .layout import ParameterLayout

__all__ = ["DIRECTION_KEYS", "is_li_directions", "load_directions", "random_direction", "random_directions",
           "read_tensor_group", "stack_directions"]


def _generator(seed: int, index: int) -> np.random.Generator:
    # One independent stream per (seed, index): direction 1 of seed 0 never depends on how many other
    # directions were drawn, so a 1D line and a 2D plane with the same seed share their first axis.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


def random_direction(dim: int, seed: int, index: int = 0, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Standard-normal vector of length ``dim`` (signed entries, mean 0, variance 1), reproducible from
    ``(seed, index)``; float32 or float64."""
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return _generator(seed, index).standard_normal(int(dim), dtype=dtype)


def random_directions(
    dim: int, seed: int, count: int = 2, dtype: np.dtype | type = np.float32, first_index: int = 0
) -> np.ndarray:
    """``count`` independent Gaussian directions, shape ``(count, dim)``; row ``k`` uses stream index
    ``first_index + k``."""
    return np.stack([random_direction(dim, seed, first_index + k, dtype) for k in range(count)])


#: the groups of a Li et al. direction file, in the order of the plane's axes
DIRECTION_KEYS = ("xdirection", "ydirection")


def is_li_directions(file: Any) -> bool:
    """Whether an open HDF5 file is a Li et al. direction file (an ``xdirection`` group of numbered tensors)."""
    import h5py

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


def _read_hdf5(path: str, keys: Sequence[str] | None, layout: ParameterLayout | None) -> np.ndarray:
    import h5py

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


def stack_directions(directions: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Validate and stack directions into a ``(k, dim)`` array (helper for callers taking a list)."""
    arr = np.asarray(directions)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"directions must be (k, dim), got shape {arr.shape}")
    return arr
