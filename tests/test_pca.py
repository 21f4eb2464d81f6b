"""Streamed trajectory PCA against scikit-learn's PCA on the explicit difference matrix."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from gradvis_steps.core.pca import gram_matrix, trajectory_pca


def _trajectory(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """A noisy curved path, float32 as checkpoints are stored."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n)[:, None]
    a, b = rng.normal(size=(2, dim))
    return (1.0 + a * t + b * t**2 + 0.05 * rng.normal(size=(n, dim))).astype(np.float32)


class _Reader:
    """``get(i)`` that counts its reads."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        self.calls = 0

    def __call__(self, i: int) -> np.ndarray:
        self.calls += 1
        return self.rows[i].copy()


def _assert_same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    for u, v in zip(a, b, strict=True):
        s = np.sign(u @ v)
        np.testing.assert_allclose(u, s * v, atol=atol)


@pytest.mark.parametrize("include_reference", [True, False])
@pytest.mark.parametrize("block_size", [1, 3, 100])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_sklearn(include_reference, block_size, dtype):
    n, dim = 11, 300
    traj = _trajectory(n, dim).astype(dtype)
    ref = traj[-1].astype(np.float64)
    rows = traj if include_reference else traj[:-1]
    X = rows.astype(np.float64) - ref  # Algorithm 1's samples theta_i - theta_n
    sk = PCA(n_components=3, svd_solver="full").fit(X)
    res = trajectory_pca(_Reader(traj), n, n_components=3, include_reference=include_reference, block_size=block_size)
    assert res.components.shape == (3, dim)
    # Components come in the checkpoints' dtype: float64 to float64 rounding, float32 to float32's.
    assert res.components.dtype == dtype
    tol = 1e-9 if dtype == np.float64 else 2e-6
    _assert_same_up_to_sign(res.components, sk.components_, atol=tol)
    # The Gram matrix is exact in float64 whatever the checkpoints' dtype: variances match to float64 rounding.
    np.testing.assert_allclose(res.explained_variance, sk.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(res.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(res.singular_values, sk.singular_values_, rtol=1e-9)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(3), atol=tol)
    assert res.n_samples == len(rows)


def test_streaming_reads_and_block_sizes():
    n, dim = 20, 50
    traj = _trajectory(n, dim, seed=1)
    reader = _Reader(traj)
    m, b = n, 4
    trajectory_pca(reader, n, n_components=2, block_size=b)
    # reference + Gram pass (each block once, then every later sample once per block) + component pass
    gram_reads = sum(min(b, m - s) + (m - min(s + b, m)) for s in range(0, m, b))
    assert reader.calls == 1 + gram_reads + m
    assert gram_reads < m * m  # far fewer than all pairs

    G = gram_matrix(_Reader(traj), np.arange(n), traj[-1], block_size=3)
    D = traj.astype(np.float64) - traj[-1].astype(np.float64)
    np.testing.assert_allclose(G, D @ D.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_size", [1, 2])
def test_peak_memory_is_a_few_model_vectors(block_size):
    """tracemalloc sees every numpy buffer: the streamed PCA of float32 checkpoints holds at most
    max(block_size, n_components) + 2 model-sized float32 vectors (plus the n x n Gram matrix) at once."""
    import tracemalloc

    n, dim = 12, 400_000
    rng = np.random.default_rng(0)
    base = rng.standard_normal(dim, dtype=np.float32)
    steps = [rng.standard_normal(dim, dtype=np.float32) * 1e-2 for _ in range(2)]

    def get(i: int) -> np.ndarray:  # a new float32 vector per read, as h5py returns
        return base + (i * steps[0] + (i % 3) * steps[1])

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        res = trajectory_pca(get, n, n_components=2, block_size=block_size)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    vectors = peak / (4 * dim)
    # get() itself builds one temporary (i * steps[0]) besides its result: allow it, and 5% for small buffers.
    assert vectors <= max(block_size, 2) + 2 + 1 + 0.05, f"peak {vectors:.2f} model-sized float32 vectors"
    assert res.components.shape == (2, dim)


def test_two_checkpoints():
    traj = _trajectory(2, 40, seed=2)
    res = trajectory_pca(_Reader(traj), 2, n_components=2)
    # only one direction is defined by two points: along theta_1 - theta_2, all variance
    assert res.components.shape == (1, 40)
    d = (traj[0] - traj[1]).astype(np.float64)
    _assert_same_up_to_sign(res.components, (d / np.linalg.norm(d))[None], atol=1e-12)
    np.testing.assert_allclose(res.explained_variance_ratio, [1.0])
    sk = PCA(n_components=1).fit(traj.astype(np.float64) - traj[1].astype(np.float64))
    np.testing.assert_allclose(res.explained_variance, sk.explained_variance_, rtol=1e-10)
    with pytest.raises(ValueError):
        trajectory_pca(_Reader(traj), 2, include_reference=False)  # a single sample has no variance


def test_sign_convention_and_errors():
    traj = _trajectory(6, 30, seed=3)
    res = trajectory_pca(_Reader(traj), 6, n_components=2)
    for c in res.components:
        assert c[np.argmax(np.abs(c))] > 0
    with pytest.raises(ValueError):
        trajectory_pca(_Reader(traj), 6, n_components=7)


def test_stationary_trajectory_has_no_components():
    traj = np.ones((4, 10), np.float32)
    res = trajectory_pca(_Reader(traj), 4)
    assert res.components.shape == (0, 10) and res.explained_variance_ratio.size == 0
