"""Grid construction, evaluation against an analytic objective, MPI-style chunking and resume."""

from __future__ import annotations

import numpy as np
import pytest

from gradvis_steps.core.grid import (
    Grid,
    LandscapeResult,
    PointValues,
    axis_range,
    chunk_counts,
    chunk_indices,
    evaluate_grid,
    evaluate_trajectory,
    trajectory_ranges,
)
from gradvis_steps.core.layout import ParameterLayout
from gradvis_steps.core.objective import Evaluation, HessianOperator, Objective


class QuadraticObjective:
    """Test double of the Objective protocol: ``L = 0.5 (x-x*)^T A (x-x*) + c`` in numpy."""

    def __init__(self, dim: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        B = rng.normal(size=(dim, dim))
        self.A = B @ B.T + np.eye(dim)
        self.xstar = rng.normal(size=dim)
        self.c = 0.25
        self.layout = ParameterLayout.from_shapes([("w", (dim,), "other", None)])
        self.calls = 0

    @property
    def dim(self) -> int:
        return self.A.shape[0]

    def from_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, dtype=np.float64)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def loss(self, theta: np.ndarray) -> float:
        r = theta - self.xstar
        return float(0.5 * r @ self.A @ r + self.c)

    def accuracy(self, theta: np.ndarray) -> float:
        return float(np.exp(-np.sum((theta - self.xstar) ** 2)))

    def evaluate(self, theta: np.ndarray) -> Evaluation:
        self.calls += 1
        return Evaluation(self.loss(theta), self.accuracy(theta))

    def grad(self, theta: np.ndarray) -> np.ndarray:
        return self.A @ (theta - self.xstar)

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.A @ v

    def hvp_operator(self, theta: np.ndarray) -> QuadraticHessian:
        return QuadraticHessian(self.A)

    # the rest of the protocol: nothing to calibrate, no buffers
    hvp_mode = "exact"
    device_type = "cpu"

    def initial_point(self) -> np.ndarray:
        return np.zeros(self.dim)

    def set_buffers(self, flat: np.ndarray, layout: list[dict] | str) -> None:
        if len(flat):
            raise ValueError("a quadratic has no buffers")

    def calibrate_hvp(self, theta: np.ndarray, block: int = 1) -> dict:
        return {"mode": self.hvp_mode, "chosen_by": "config"}


class QuadraticHessian:
    """The HessianOperator of :class:`QuadraticObjective`: the constant matrix ``A``."""

    block_size = 4

    def __init__(self, A: np.ndarray):
        self.A = A

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return self.A @ v

    def matmat(self, V: np.ndarray) -> np.ndarray:
        return V @ self.A.T


def _analytic(obj: QuadraticObjective, center, D, x, y):
    """Closed form on the plane: L(center + a d1 + b d2) via the 2x2 reduced quadratic."""
    r0 = center - obj.xstar
    H = D @ obj.A @ D.T
    g = D @ obj.A @ r0
    X, Y = np.meshgrid(x, y, indexing="ij")
    C = np.stack([X, Y], axis=-1)
    loss = 0.5 * np.einsum("...i,ij,...j->...", C, H, C) + C @ g + 0.5 * r0 @ obj.A @ r0 + obj.c
    P = r0 + C @ D
    acc = np.exp(-np.sum(P**2, axis=-1))
    return loss, acc


@pytest.fixture
def setup():
    obj = QuadraticObjective()
    rng = np.random.default_rng(1)
    center = rng.normal(size=obj.dim)
    D = rng.normal(size=(2, obj.dim))
    grid = Grid.from_ranges([(-1.0, 1.5), (-0.5, 2.0)], n_points=(7, 5))
    return obj, center, D, grid


def test_objective_double_satisfies_protocol():
    objective = QuadraticObjective()
    assert isinstance(objective, Objective)
    assert isinstance(objective.hvp_operator(objective.initial_point()), HessianOperator)


def test_grid_equals_analytic_formula(setup):
    obj, center, D, grid = setup
    vals = evaluate_grid(obj, center, D, grid, progress=False)
    assert obj.calls == grid.n_points and vals.filled.all()
    loss, acc = _analytic(obj, center, D, *grid.axes)
    np.testing.assert_allclose(vals.loss.reshape(grid.shape), loss, rtol=1e-12)
    np.testing.assert_allclose(vals.accuracy.reshape(grid.shape), acc, rtol=1e-12, atol=1e-300)
    # flat index convention: p = i * ny + j is (x[i], y[j])
    p = 2 * 5 + 3
    np.testing.assert_allclose(grid.points([p])[0], [grid.axes[0][2], grid.axes[1][3]])
    # other coordinate forms give the same values
    same = evaluate_grid(obj, center, D, list(grid.axes), progress=False)
    np.testing.assert_array_equal(same.loss, vals.loss)
    same = evaluate_grid(obj, center, D, grid.points(), progress=False)
    np.testing.assert_array_equal(same.loss, vals.loss)
    result = LandscapeResult.from_values(grid, vals)
    np.testing.assert_array_equal(result.loss, vals.loss.reshape(grid.shape))
    assert result.filled.all() and result.shape == grid.shape


def test_chunked_over_three_ranks_equals_full(setup):
    obj, center, D, grid = setup
    full = evaluate_grid(obj, center, D, grid, progress=False)
    counts, displs = chunk_counts(grid.n_points, 3)
    assert counts.sum() == grid.n_points and counts.max() - counts.min() <= 1
    parts_loss, parts_acc = [], []
    for rank in range(3):
        idx = chunk_indices(grid.n_points, 3, rank)
        assert idx[0] == displs[rank] and idx.size == counts[rank]
        vals = evaluate_grid(obj, center, D, grid, indices=idx, progress=False)
        assert vals.filled.sum() == idx.size  # only this rank's share
        parts_loss.append(vals.loss[idx])
        parts_acc.append(vals.accuracy[idx])
    np.testing.assert_array_equal(np.concatenate(parts_loss), full.loss)
    np.testing.assert_array_equal(np.concatenate(parts_acc), full.accuracy)


def test_chunk_helpers_edge_cases():
    assert [chunk_indices(7, 3, r).tolist() for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [chunk_indices(2, 4, r).size for r in range(4)] == [1, 1, 0, 0]
    with pytest.raises(ValueError):
        chunk_indices(5, 2, 2)


def test_resume_fills_only_missing_points(setup):
    obj, center, D, grid = setup
    first = chunk_indices(grid.n_points, 2, 0)
    vals = evaluate_grid(obj, center, D, grid, indices=first, progress=False)
    assert np.isnan(vals.loss[~vals.filled]).all()
    vals.loss[0] = np.nan  # a diverged point is still "filled": not retried
    obj.calls = 0
    seen = []
    evaluate_grid(
        obj,
        center,
        D,
        grid,
        out=vals,
        progress=False,
        batch_size=4,
        callback=lambda idx, out: seen.extend(idx.tolist()),
    )
    assert obj.calls == grid.n_points - first.size
    assert sorted(seen) == list(range(first.size, grid.n_points))
    assert vals.filled.all() and np.isnan(vals.loss[0])
    obj.calls = 0
    evaluate_grid(obj, center, D, grid, out=vals, progress=False)
    assert obj.calls == 0


def test_evaluate_many_hook_is_used(setup):
    obj, center, D, grid = setup
    batches = []

    def evaluate_many(c, dirs, coeffs):
        batches.append(len(coeffs))
        return [obj.evaluate(c + sum(float(a) * d for a, d in zip(row, dirs, strict=True))) for row in coeffs]

    obj.evaluate_many = evaluate_many
    vals = evaluate_grid(obj, center, D, grid, progress=False, batch_size=8)
    assert batches == [8, 8, 8, 8, 3]
    loss, _ = _analytic(obj, center, D, *grid.axes)
    np.testing.assert_allclose(vals.loss.reshape(grid.shape), loss, rtol=1e-12)


def test_trajectory_projected_loss(setup):
    obj, center, D, _ = setup
    coeffs = np.array([[1.0, -0.5], [0.2, 0.1], [0.0, 0.0]])
    vals = evaluate_trajectory(obj, center, D, coeffs)
    expected = [obj.loss(center + c @ D) for c in coeffs]
    np.testing.assert_allclose(vals.loss, expected, rtol=1e-12)
    # 1D line along one direction
    line = Grid.from_ranges([(-1, 1)], 5)
    v1 = evaluate_grid(obj, center, D[:1], line, progress=False)
    np.testing.assert_allclose(v1.loss, [obj.loss(center + a * D[0]) for a in line.axes[0]], rtol=1e-12)


def test_border_definition():
    # bounding box [-1, 3] (includes origin), extent 4, each side extended by 0.4 * 4
    assert axis_range([-1.0, 3.0, 0.5]) == pytest.approx((-2.6, 4.6))
    # origin forced in: [1, 2] -> [0, 2]
    assert axis_range([1.0, 2.0], border=0.5) == pytest.approx((-1.0, 3.0))
    assert axis_range([1.0, 2.0], border=0.5, include_origin=False, min_extent=0.1) == pytest.approx((0.5, 2.5))
    # degenerate (one point at the origin): widened to min_extent, then the border
    assert axis_range([0.0], min_extent=2.0, border=0.25) == pytest.approx((-1.5, 1.5))
    assert axis_range([5.0], include_origin=False, min_extent=1.0, border=0.0) == pytest.approx((4.5, 5.5))
    coeffs = np.array([[-1.0, 0.0], [3.0, 2.0], [0.0, 0.0]])
    assert trajectory_ranges(coeffs, border=0.4) == [pytest.approx((-2.6, 4.6)), pytest.approx((-0.8, 2.8))]
    g = Grid.from_trajectory(coeffs, 50)
    assert g.shape == (50, 50)
    assert g.axes[0][0] == pytest.approx(-2.6) and g.axes[0][-1] == pytest.approx(4.6)
    # the trajectory box is the middle 1 / (1 + 2 * 0.4) of the axis
    assert (3.0 - -1.0) / (g.axes[0][-1] - g.axes[0][0]) == pytest.approx(1 / 1.8)
    g = Grid.from_trajectory(coeffs, (11, 21), ranges=[None, (-1.0, 1.0)])
    assert g.shape == (11, 21) and g.axes[1][0] == -1.0 and g.axes[0][0] == pytest.approx(-2.6)


def test_point_values_and_result_validation():
    pv = PointValues.empty(4)
    assert np.isnan(pv.loss).all() and pv.missing().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        LandscapeResult(axes=(np.arange(3.0), np.arange(2.0)), loss=np.zeros(6), trajectory=np.zeros((4, 3)))
