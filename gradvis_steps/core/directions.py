"""Raw (not yet normalized) visualization directions: seeded random Gaussian vectors.

Section 2.1 of the GradVis paper: "The directional vector d is either a random Gaussian vector, a custom
vector provided by the user or it is calculated using principal component analysis (PCA)". PCA lives in
:mod:`.pca`, Hessian eigenvectors come from the Lanczos code, a user's files are read by
:func:`gradvis_steps.storage.directions.load_directions`; this module draws the random ones. All vectors are flat
numpy arrays of length ``layout.size``; normalize them with :mod:`.normalization`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_direction", "random_directions"]


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
