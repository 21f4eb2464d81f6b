"""Raw (not yet normalized) visualization directions: seeded random Gaussian vectors and user files.

Section 2.1 of the GradVis paper: "The directional vector d is either a random Gaussian vector, a custom
vector provided by the user or it is calculated using principal component analysis (PCA)". PCA lives in
:mod:`.pca`, Hessian eigenvectors come from the Lanczos code; this module covers the other two. All
vectors are flat numpy arrays of length ``layout.size``; normalize them with :mod:`.normalization`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["random_direction", "random_directions", "load_directions", "stack_directions"]


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


def _read_hdf5(path: str, key: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if key is None:
            names = list(f.keys())
            if len(names) != 1:
                raise ValueError(f"{path}: contains {names}; pass key= to choose the direction")
            key = names[0]
        if key not in f:
            raise KeyError(f"{path}: no dataset or group {key!r} (has {list(f.keys())})")
        obj = f[key]
        if isinstance(obj, h5py.Group):
            # Li et al.'s direction files store one dataset per parameter tensor, named "0", "1", ...
            # in model order; concatenating them flattened gives the flat vector.
            try:
                names = sorted(obj.keys(), key=int)
            except ValueError as err:
                raise ValueError(
                    f"{path}:{key} is a group whose members {list(obj.keys())} are not numbered tensors"
                ) from err
            return np.concatenate([np.asarray(obj[n][()]).ravel() for n in names])
        return np.asarray(obj[()])


def load_directions(path: str | os.PathLike, dim: int, key: str | None = None) -> np.ndarray:
    """Load user directions from ``.npy``, ``.npz`` or HDF5 (``.h5``/``.hdf5``) as shape ``(k, dim)``.

    The file holds one flat vector (``(dim,)``) or a stack (``(k, dim)``); for ``.npz``/HDF5 with several
    entries, ``key`` names the one to read (an HDF5 group of tensors named 0, 1, ... is concatenated, as
    in Li et al.'s direction files). Raises ``ValueError`` on a wrong length or non-finite entries.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.keys())
            if key is None:
                if len(names) != 1:
                    raise ValueError(f"{path}: contains {names}; pass key= to choose the direction")
                key = names[0]
            if key not in names:
                raise KeyError(f"{path}: no array {key!r} (has {names})")
            arr = z[key]
    elif ext in (".h5", ".hdf5", ".hdf"):
        arr = _read_hdf5(path, key)
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
