"""Streamed PCA of a training trajectory (Algorithm 1: ``phi_1, phi_2 <- PCA(theta_1 - theta_n, ...)``).

The samples are the differences ``d_i = theta_i - theta_ref`` (``theta_ref`` the final checkpoint
``theta_n`` by default), centred over the samples as standard PCA (scikit-learn's) does. With ``m``
samples of dimension ``N`` (``m`` ~ 10^2..10^3, ``N`` up to 10^8) we never form the ``m x N`` matrix ``D``:

1. the ``m x m`` Gram matrix ``G = D D^T`` is accumulated in float64 by reading checkpoints through
   ``get(i)``, holding ``block_size`` raw checkpoints (in their stored dtype) plus the reference; every
   product ``<x_a - ref, x_b - ref>`` is formed in float64 over short column windows, so it is exact to
   float64 rounding while no float64 model-sized vector is ever built;
2. centring: ``G_c = C G C`` with ``C = I - 11^T/m`` is the Gram matrix of the centred samples ``C D``;
3. ``G_c = U diag(s^2) U^T`` (numpy ``eigh``); since ``C D = U diag(s) V^T``, the components are
   ``v_k = (C D)^T u_k / s_k = sum_i (C u_k)_i d_i / s_k``, formed in one more streaming pass with in-place
   BLAS ``axpy`` in the checkpoints' dtype (float32 for float32 checkpoints: the precision the directions are
   used in).

Explained variance is ``s_k^2 / (m - 1)`` and the ratio divides by the trace of ``G_c`` (total variance),
exactly as scikit-learn's ``PCA``. Peak memory, in model-sized vectors of the checkpoint dtype:
``max(block_size + 2, n_components + 2)`` (reference, block, the row being read; then reference, row,
output) plus ``m^2`` float64 and a few percent of a vector for float64 column windows. The default
``block_size=1`` stays within 4 vectors for 2 components at the price of ``m (m + 1) / 2`` reads; callers with
memory to spare raise it (``gradvis_steps.directions`` sizes it from ``--pca-memory-mb``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import get_blas_funcs

__all__ = ["PCAResult", "trajectory_pca", "gram_matrix"]


def _windows(dim: int) -> list[slice]:
    """Column windows for the float64 arithmetic: about 1/128 of a vector each (4096..65536 entries), so the
    float64 temporaries of a window stay a few percent of one model-sized vector."""
    size = min(max(dim // 128, 4096), 65536)
    return [slice(s, min(s + size, dim)) for s in range(0, dim, size)]


@dataclass(frozen=True, eq=False)
class PCAResult:
    """Principal directions of a trajectory; the rows of ``components`` are orthonormal."""

    components: np.ndarray  # (k, dim) in the checkpoints' float dtype, unit norm, largest-|entry| positive
    explained_variance: np.ndarray  # (k,) s_k^2 / (m - 1)
    explained_variance_ratio: np.ndarray  # (k,) fraction of the total variance
    singular_values: np.ndarray  # (k,) s_k of the centred sample matrix
    n_samples: int  # m, the number of difference vectors used
    sample_indices: np.ndarray  # (m,) the checkpoint indices i of the samples d_i
    reference_index: int  # the checkpoint subtracted from all samples


def _sample_indices(n: int, reference_index: int, include_reference: bool) -> tuple[np.ndarray, int]:
    if n < 1:
        raise ValueError(f"need at least one checkpoint, got n={n}")
    ref = reference_index % n if -n <= reference_index < n else None
    if ref is None:
        raise ValueError(f"reference_index {reference_index} out of range for {n} checkpoints")
    idx = np.arange(n)
    if not include_reference:
        idx = idx[idx != ref]
    return idx, ref


def _float_dtype(a: np.ndarray) -> np.dtype:
    return a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float64)


def _read(get: Callable[[int], np.ndarray], i: int, dim: int | None = None) -> np.ndarray:
    v = np.asarray(get(int(i)))
    if v.ndim != 1 or (dim is not None and v.shape[0] != dim):
        raise ValueError(f"checkpoint {i} has shape {v.shape}, expected ({dim},)" if dim else
                         f"checkpoint {i} is not a flat vector (shape {v.shape})")
    return v


def _block_dots(block: np.ndarray, rows: int, v: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
    """``(block[:rows] - ref) @ (v - ref)`` in float64, one column window at a time."""
    out = np.zeros(rows)
    for w in _windows(v.shape[0]):
        b = block[:rows, w].astype(np.float64)
        x = v[w].astype(np.float64)
        if ref is not None:
            r = ref[w].astype(np.float64)
            b -= r
            x -= r
        out += b @ x
    return out


def gram_matrix(
    get: Callable[[int], np.ndarray],
    indices: np.ndarray,
    reference: np.ndarray | None,
    block_size: int = 1,
) -> np.ndarray:
    """``G[a, b] = <d_a, d_b>`` (float64) for ``d_a = get(indices[a]) - reference``, streaming.

    Samples are read ``block_size`` at a time into one preallocated block: the block's rows are held
    while every later sample is read once and dotted with them, so ``len(indices) * (1 + m / (2 *
    block_size))`` reads and ``block_size + 1`` raw vectors in memory (plus the reference).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    m = len(indices)
    G = np.zeros((m, m))
    if m == 0:
        return G
    block: np.ndarray | None = None
    for start in range(0, m, block_size):
        stop = min(start + block_size, m)
        rows = stop - start
        for r, a in enumerate(range(start, stop)):
            v = _read(get, indices[a], None if block is None else block.shape[1])
            if block is None:
                block = np.empty((min(block_size, m), v.shape[0]), dtype=_float_dtype(v))
            block[r] = v
            del v
        for r in range(rows):  # the block's own products
            G[start:stop, start + r] = _block_dots(block, rows, block[r], reference)
        for b in range(stop, m):
            v = _read(get, indices[b], block.shape[1])
            col = _block_dots(block, rows, v, reference)
            del v  # before the next read: never two rows alive besides the block
            G[start:stop, b] = col
            G[b, start:stop] = col
    return 0.5 * (G + G.T)


def trajectory_pca(
    get: Callable[[int], np.ndarray],
    n: int,
    *,
    n_components: int = 2,
    reference_index: int = -1,
    include_reference: bool = True,
    block_size: int = 1,
    rtol: float = 1e-10,
) -> PCAResult:
    """PCA of the checkpoints ``get(0), ..., get(n-1)`` relative to ``get(reference_index)``.

    ``include_reference=True`` keeps the (zero) sample of the reference checkpoint itself, as Li et al.'s
    code does; Algorithm 1 lists only ``theta_1 - theta_n ... theta_{n-1} - theta_n``
    (``include_reference=False``). After centring the two differ only in whether the last checkpoint
    counts; keeping it makes two checkpoints give one component, along ``theta_1 - theta_2``.

    Components whose variance is below ``rtol`` times the largest are not defined by the data and are
    dropped, so ``components`` may have fewer than ``n_components`` rows (e.g. one for two checkpoints).
    """
    idx, ref = _sample_indices(n, reference_index, include_reference)
    m = len(idx)
    if m < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {m} (n={n}, include_reference={include_reference})")
    if not 1 <= n_components <= m:
        raise ValueError(f"n_components must be in [1, {m}] for {m} samples, got {n_components}")

    reference = _read(get, ref)
    reference = reference.astype(_float_dtype(reference), copy=False)
    G = gram_matrix(get, idx, reference, block_size)

    # Centre over samples: G_c = C G C, C = I - 11^T/m (Gram matrix of the centred samples).
    row_mean = G.mean(axis=1, keepdims=True)
    Gc = G - row_mean - row_mean.T + G.mean()
    Gc = 0.5 * (Gc + Gc.T)
    evals, evecs = np.linalg.eigh(Gc)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    total = float(np.trace(Gc))

    keep = [k for k in range(n_components) if evals[0] > 0 and evals[k] > rtol * evals[0]]
    k = len(keep)
    s = np.sqrt(evals[:k])
    # Component weights on the raw samples: v_k = sum_i (C u_k)_i d_i / s_k.
    W = evecs[:, :k] - evecs[:, :k].mean(axis=0, keepdims=True)
    W = W / s[None, :]

    dim = reference.shape[0]
    components = np.zeros((k, dim), dtype=reference.dtype)
    if k:
        axpy = get_blas_funcs("axpy", (components,))  # y += a x in place: no model-sized temporaries
        for a, i in enumerate(idx):  # second streaming pass
            d = np.asarray(_read(get, i, dim), dtype=components.dtype)
            if d.base is not None or not d.flags.writeable:
                d = d.copy()
            d -= reference  # in place, in the checkpoints' dtype (the precision of the stored samples)
            for c in range(k):
                axpy(d, components[c], a=float(W[a, c]))
            del d
    del reference  # keeps the sign fix below within the output's memory
    if k:
        # Re-normalize (removes rounding drift) and fix the sign: largest-|entry| positive, as sklearn.
        for c in components:
            c /= np.sqrt(sum(float(np.dot(c[w].astype(np.float64), c[w])) for w in _windows(dim)))
            if c[np.argmax(np.abs(c))] < 0:
                c *= -1

    var = evals[:k] / (m - 1)
    ratio = evals[:k] / total if total > 0 else np.zeros(k)
    return PCAResult(
        components=components,
        explained_variance=var,
        explained_variance_ratio=ratio,
        singular_values=s,
        n_samples=m,
        sample_indices=idx,
        reference_index=ref,
    )
