"""Streamed PCA of a training trajectory (Algorithm 1: ``phi_1, phi_2 <- PCA(theta_1 - theta_n, ...)``).

The samples are the differences ``d_i = theta_i - theta_ref`` (``theta_ref`` the final checkpoint
``theta_n`` by default), centred over the samples as standard PCA (scikit-learn's) does. With ``m``
samples of dimension ``N`` (``m`` ~ 10^2, ``N`` up to 10^8) we never form the ``m x N`` matrix ``D``:

1. the ``m x m`` Gram matrix ``G = D D^T`` is accumulated in float64 by reading checkpoints through
   ``get(i)``, holding at most ``block_size`` difference vectors (plus the reference) at a time;
2. centring: ``G_c = C G C`` with ``C = I - 11^T/m`` is the Gram matrix of the centred samples ``C D``;
3. ``G_c = U diag(s^2) U^T`` (numpy ``eigh``); since ``C D = U diag(s) V^T``, the components are
   ``v_k = (C D)^T u_k / s_k = sum_i (C u_k)_i d_i / s_k``, formed in one more streaming pass.

Explained variance is ``s_k^2 / (m - 1)`` and the ratio divides by the trace of ``G_c`` (total variance),
exactly as scikit-learn's ``PCA``. Memory: ``block_size + 2`` model-sized float64 vectors, plus
``n_components`` vectors for the output, plus ``m^2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["PCAResult", "trajectory_pca", "gram_matrix"]


@dataclass(frozen=True, eq=False)
class PCAResult:
    """Principal directions of a trajectory; the rows of ``components`` are orthonormal."""

    components: np.ndarray  # (k, dim) float64, unit norm, sign: largest-|entry| positive (as sklearn)
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


def gram_matrix(
    get: Callable[[int], np.ndarray],
    indices: np.ndarray,
    reference: np.ndarray | None,
    block_size: int = 8,
) -> np.ndarray:
    """``G[a, b] = <d_a, d_b>`` (float64) for ``d_a = get(indices[a]) - reference``, streaming.

    Samples are read ``block_size`` at a time: a block's rows are held while every later sample is read
    once and dotted with them, so ``len(indices) * (1 + m / (2 * block_size))`` reads, ``block_size + 1``
    vectors in memory.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    m = len(indices)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)

    def diff(i: int) -> np.ndarray:
        v = np.asarray(get(int(i)), dtype=np.float64)
        return v - ref if ref is not None else v.copy()

    G = np.zeros((m, m))
    for start in range(0, m, block_size):
        stop = min(start + block_size, m)
        block = np.stack([diff(indices[a]) for a in range(start, stop)])
        G[start:stop, start:stop] = block @ block.T
        for b in range(stop, m):
            col = block @ diff(indices[b])
            G[start:stop, b] = col
            G[b, start:stop] = col
        del block
    return G


def trajectory_pca(
    get: Callable[[int], np.ndarray],
    n: int,
    *,
    n_components: int = 2,
    reference_index: int = -1,
    include_reference: bool = True,
    block_size: int = 8,
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

    reference = np.asarray(get(ref), dtype=np.float64)
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
    components = np.zeros((k, dim))
    if k:
        for a, i in enumerate(idx):  # second streaming pass
            d = np.asarray(get(int(i)), dtype=np.float64) - reference
            for c in range(k):
                components[c] += W[a, c] * d
        # Re-normalize (removes rounding drift) and fix the sign: largest-|entry| positive, as sklearn.
        components /= np.linalg.norm(components, axis=1, keepdims=True)
        signs = np.sign(components[np.arange(k), np.argmax(np.abs(components), axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]

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
