"""Trajectory coordinates in the visualization plane (Algorithm 1, "Solve alpha_i phi*_1 + beta_i phi*_2 =
theta_i - theta_n for each i").

After filter-wise normalization the directions are generally *not* orthogonal, so the coefficients are
the least-squares solution ``c_i = argmin ||d_i - D^T c||`` with ``D`` the ``(k, dim)`` direction stack
and ``d_i = theta_i - theta_n``: the normal equations ``(D D^T) c_i = D d_i`` use only the small ``k x k``
Gram matrix of the directions. The distance of each checkpoint from the plane, ``||d_i - D^T c_i||``, says
how faithful the drawn trajectory is (a large residual means the path leaves the plane).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ProjectionResult", "project_trajectory", "project_vector"]


@dataclass(frozen=True, eq=False)
class ProjectionResult:
    """Least-squares coordinates of the checkpoints on the directions."""

    coefficients: np.ndarray  # (n, k): d_i ~= sum_k coefficients[i, k] * directions[k]
    residuals: np.ndarray  # (n,): ||d_i - D^T c_i||, distance of checkpoint i from the plane
    distances: np.ndarray  # (n,): ||d_i||, distance of checkpoint i from the reference


class _Solver:
    """Least squares on fixed directions: normal equations + one step of iterative refinement."""

    def __init__(self, directions: np.ndarray):
        D = np.asarray(directions, dtype=np.float64)
        if D.ndim == 1:
            D = D[None, :]
        if D.ndim != 2 or D.shape[0] < 1:
            raise ValueError(f"directions must be (k, dim) with k >= 1, got shape {D.shape}")
        self.D = D
        self.M = D @ D.T  # k x k Gram matrix of the directions
        if not np.all(np.isfinite(self.M)):
            raise ValueError("directions contain NaN or inf")

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        # lstsq rather than solve: a singular M (zero or parallel directions) gives the min-norm answer.
        return np.linalg.lstsq(self.M, rhs, rcond=None)[0]

    def __call__(self, d: np.ndarray) -> tuple[np.ndarray, float]:
        c = self._solve(self.D @ d)
        r = d - self.D.T @ c
        # One refinement step: solving for the residual's own coefficients recovers the accuracy the
        # normal equations lose to the squared condition number of D.
        c = c + self._solve(self.D @ r)
        r = d - self.D.T @ c
        return c, float(np.sqrt(r @ r))


def project_vector(d: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares coefficients ``c`` (k,) of one flat vector on the directions, and ``||d - D^T c||``."""
    return _Solver(directions)(np.asarray(d, dtype=np.float64))


def project_trajectory(
    get: Callable[[int], np.ndarray],
    n: int,
    directions: np.ndarray,
    reference: np.ndarray,
) -> ProjectionResult:
    """Coordinates of ``get(i) - reference`` (i = 0..n-1) on ``directions`` ``(k, dim)``, streaming.

    One checkpoint is in memory at a time (plus the directions); the directions need not be orthogonal.
    """
    solver = _Solver(directions)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (solver.D.shape[1],):
        raise ValueError(f"reference has shape {ref.shape}, directions have dim {solver.D.shape[1]}")
    coeffs = np.zeros((n, solver.D.shape[0]))
    residuals = np.zeros(n)
    distances = np.zeros(n)
    for i in range(n):
        d = np.asarray(get(i), dtype=np.float64) - ref
        coeffs[i], residuals[i] = solver(d)
        distances[i] = np.sqrt(d @ d)
    return ProjectionResult(coefficients=coeffs, residuals=residuals, distances=distances)
