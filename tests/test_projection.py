"""Least-squares trajectory coordinates on non-orthogonal directions (Algorithm 1)."""

from __future__ import annotations

import numpy as np

from gradvis_steps.core.projection import project_trajectory, project_vector


def _setup(dim: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    d1 = rng.normal(size=dim)
    d2 = 0.8 * d1 + 0.3 * rng.normal(size=dim)  # strongly non-orthogonal (cos ~ 0.94)
    D = np.stack([d1, d2])
    center = rng.normal(size=dim)
    return rng, D, center


def _orthogonal_offset(rng, D: np.ndarray, norm: float) -> np.ndarray:
    q, _ = np.linalg.qr(D.T)
    v = rng.normal(size=D.shape[1])
    v -= q @ (q.T @ v)
    return norm * v / np.linalg.norm(v)


def test_points_in_plane_recovered_exactly():
    rng, D, center = _setup()
    coeffs = rng.uniform(-3, 3, size=(15, 2))
    traj = center + coeffs @ D
    res = project_trajectory(lambda i: traj[i], len(traj), D, center)
    np.testing.assert_allclose(res.coefficients, coeffs, atol=1e-10, rtol=0)
    np.testing.assert_allclose(res.residuals, 0, atol=1e-10)
    np.testing.assert_allclose(res.distances, np.linalg.norm(coeffs @ D, axis=1), rtol=1e-12)


def test_residual_is_distance_from_plane():
    rng, D, center = _setup(seed=1)
    coeffs = rng.uniform(-2, 2, size=(10, 2))
    offsets = np.stack([_orthogonal_offset(rng, D, r) for r in np.linspace(0.1, 5, 10)])
    traj = center + coeffs @ D + offsets
    res = project_trajectory(lambda i: traj[i], len(traj), D, center)
    np.testing.assert_allclose(res.coefficients, coeffs, atol=1e-10, rtol=0)
    np.testing.assert_allclose(res.residuals, np.linalg.norm(offsets, axis=1), rtol=1e-10)


def test_one_and_three_directions_and_float32_input():
    rng, D, center = _setup(seed=2)
    D3 = np.vstack([D, rng.normal(size=D.shape[1])])
    c = np.array([0.5, -1.5, 2.0])
    c_one, r_one = project_vector(2.5 * D[0], D[0])
    np.testing.assert_allclose(c_one, [2.5], atol=1e-12)
    assert r_one < 1e-10
    c3, r3 = project_vector(c @ D3, D3)
    np.testing.assert_allclose(c3, c, atol=1e-10)
    # float32 checkpoints/directions: coefficients are those of the float32 values, computed in float64
    traj = (center + c[:2] @ D).astype(np.float32)
    res = project_trajectory(lambda i: traj, 1, D.astype(np.float32), center.astype(np.float32))
    np.testing.assert_allclose(res.coefficients[0], c[:2], atol=1e-5)


def test_degenerate_directions_do_not_crash():
    rng, D, center = _setup(seed=3)
    Dp = np.stack([D[0], 2 * D[0]])  # parallel: minimum-norm coefficients
    c, r = project_vector(3 * D[0], Dp)
    np.testing.assert_allclose(c @ Dp, 3 * D[0], atol=1e-9)
    np.testing.assert_allclose(c, [0.6, 1.2], atol=1e-9)
    assert r < 1e-9
