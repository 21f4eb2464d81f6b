"""Evaluation grids on a line or plane through ``center`` (eq. 1: ``L(theta_n + alpha phi*_1 + beta phi*_2)``).

Grid range (Algorithm 1 "from min(alpha_i) to max(alpha_i)", widened by the paper's "additional border of
40% around the trajectory", section 4), per axis, with ``lo, hi`` the trajectory coefficients' min/max:

1. if ``include_origin``, the interval is widened to contain 0 (the center itself);
2. if its extent ``hi - lo`` is below ``min_extent`` (e.g. a one-point trajectory), it is widened
   symmetrically about its midpoint to ``min_extent``;
3. each side is extended by ``border * (hi - lo)``: the range is ``[lo - b*e, hi + b*e]`` and its total
   width is ``(1 + 2 b) e``, so the trajectory's box occupies the middle ``1/(1 + 2b)`` of every axis.

Axes are ``np.linspace(lo, hi, N)`` (both ends included; the paper uses N = 50). Values are stored flat
in C order over the axes (``indexing="ij"``): flat point ``p`` of a 2D grid is ``(x[i], y[j])`` with
``p = i * len(y) + j``, and ``loss.reshape(len(x), len(y))[i, j]`` is the loss there.

The grid is split into contiguous, balanced chunks (one per MPI rank, Algorithm 3, gathered with
Gatherv); unfilled points are NaN with ``filled=False`` so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .objective import EvaluateMany, Evaluation, Objective, batched_evaluation
from .parallel import chunk_counts, chunk_indices  # noqa: F401 - the grid's chunks, also imported from here

__all__ = [
    "axis_range",
    "trajectory_ranges",
    "Grid",
    "PointValues",
    "LandscapeResult",
    "chunk_counts",
    "chunk_indices",
    "evaluate_points",
    "evaluate_grid",
    "evaluate_trajectory",
]


# --------------------------------------------------------------------------------------------- ranges
def axis_range(
    values: np.ndarray | Sequence[float],
    *,
    border: float = 0.4,
    min_extent: float = 1.0,
    include_origin: bool = True,
) -> tuple[float, float]:
    """Range of one axis around trajectory coefficients ``values`` (definition in the module docstring)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if border < 0 or min_extent <= 0:
        raise ValueError(f"need border >= 0 and min_extent > 0, got {border}, {min_extent}")
    if v.size == 0:
        lo = hi = 0.0
    else:
        lo, hi = float(v.min()), float(v.max())
    if include_origin:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < min_extent:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 0.5 * min_extent, mid + 0.5 * min_extent
    extent = hi - lo
    return lo - border * extent, hi + border * extent


def trajectory_ranges(
    coefficients: np.ndarray,
    *,
    border: float = 0.4,
    min_extent: float = 1.0,
    include_origin: bool = True,
) -> list[tuple[float, float]]:
    """:func:`axis_range` for every column of the ``(n, k)`` trajectory coefficients."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim == 1:
        c = c[:, None]
    return [
        axis_range(c[:, a], border=border, min_extent=min_extent, include_origin=include_origin)
        for a in range(c.shape[1])
    ]


# ----------------------------------------------------------------------------------------------- grid
@dataclass(frozen=True, eq=False)
class Grid:
    """A 1D line or 2D (or k-D) rectangular grid of coefficients, one 1-D coordinate array per axis."""

    axes: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        axes = tuple(np.asarray(a, dtype=np.float64) for a in self.axes)
        if not axes or any(a.ndim != 1 or a.size < 1 for a in axes):
            raise ValueError("a grid needs at least one non-empty 1-D axis")
        object.__setattr__(self, "axes", axes)

    @classmethod
    def from_ranges(cls, ranges: Sequence[tuple[float, float]], n_points: int | Sequence[int] = 50) -> Grid:
        """``n_points`` (per axis, or one number for all) evenly spaced points over each ``(lo, hi)``."""
        ns = [n_points] * len(ranges) if np.isscalar(n_points) else list(n_points)
        if len(ns) != len(ranges):
            raise ValueError(f"{len(ranges)} ranges but {len(ns)} point counts")
        return cls(tuple(np.linspace(lo, hi, int(n)) for (lo, hi), n in zip(ranges, ns, strict=True)))

    @classmethod
    def from_trajectory(
        cls,
        coefficients: np.ndarray,
        n_points: int | Sequence[int] = 50,
        *,
        border: float = 0.4,
        min_extent: float = 1.0,
        include_origin: bool = True,
        ranges: Sequence[tuple[float, float] | None] | None = None,
    ) -> Grid:
        """Grid around the trajectory's coefficients; an explicit ``ranges[a]`` overrides axis ``a``."""
        auto = trajectory_ranges(coefficients, border=border, min_extent=min_extent, include_origin=include_origin)
        if ranges is not None:
            if len(ranges) != len(auto):
                raise ValueError(f"{len(ranges)} explicit ranges for {len(auto)} axes")
            auto = [r if r is not None else a for r, a in zip(ranges, auto, strict=True)]
        return cls.from_ranges(auto, n_points)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape))

    def points(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Coefficients ``(P, ndim)`` of the flat points ``indices`` (default all, C order)."""
        idx = np.arange(self.n_points) if indices is None else np.asarray(indices, dtype=np.int64)
        multi = np.unravel_index(idx, self.shape)
        return np.stack([ax[m] for ax, m in zip(self.axes, multi, strict=True)], axis=1)


@dataclass(eq=False)
class PointValues:
    """Loss and accuracy at a set of flat points; ``filled[p]`` is False (and the values NaN) until the
    point has been evaluated. A diverged point evaluates to NaN but is ``filled`` and not retried."""

    loss: np.ndarray
    accuracy: np.ndarray
    filled: np.ndarray

    @classmethod
    def empty(cls, n_points: int) -> PointValues:
        return cls(np.full(n_points, np.nan), np.full(n_points, np.nan), np.zeros(n_points, dtype=bool))

    def __len__(self) -> int:
        return self.loss.size

    def missing(self) -> np.ndarray:
        """Flat indices not yet evaluated."""
        return np.flatnonzero(~self.filled)


# ----------------------------------------------------------------------------------------- evaluation
def _as_backend(objective: Objective, center: Any, directions: Any) -> tuple[Any, list[Any]]:
    """Convert numpy center/directions to the objective's arrays once (backend arrays pass through)."""
    c = objective.from_numpy(center) if isinstance(center, np.ndarray) else center
    if isinstance(directions, np.ndarray):
        dirs = directions[None, :] if directions.ndim == 1 else directions
        return c, [objective.from_numpy(np.ascontiguousarray(d)) for d in dirs]
    return c, [objective.from_numpy(d) if isinstance(d, np.ndarray) else d for d in directions]


def _evaluate_batch(objective: Objective, many: EvaluateMany | None, center: Any, dirs: list[Any],
                    coeffs: np.ndarray) -> list[Evaluation]:
    """Evaluate ``center + sum_k c_k * dir_k`` for each row of ``coeffs`` ``(b, k)``.

    This is the single place that calls the objective: an objective with the batched-evaluation capability
    (``many``, from :func:`~.objective.batched_evaluation`) gets the whole batch at once (e.g. many parameter
    points in one vmapped forward pass); otherwise points are evaluated one by one.
    """
    if many is not None:
        out = list(many(center, dirs, coeffs))
        if len(out) != len(coeffs):
            raise RuntimeError(f"evaluate_many returned {len(out)} results for {len(coeffs)} points")
        return out
    results = []
    for row in coeffs:
        theta = center
        for c, d in zip(row, dirs, strict=True):
            theta = theta + float(c) * d  # only + and * so torch tensors and numpy arrays both work
        results.append(objective.evaluate(theta))
    return results


def evaluate_points(
    objective: Objective,
    center: Any,
    directions: Any,
    points: np.ndarray,
    *,
    indices: np.ndarray | None = None,
    out: PointValues | None = None,
    progress: bool = True,
    batch_size: int = 1,
    callback: Callable[[np.ndarray, PointValues], None] | None = None,
    desc: str = "points",
) -> PointValues:
    """Loss/accuracy at ``center + points[p] @ directions`` for ``p`` in ``indices`` (default all) that are
    not yet ``filled`` in ``out``; fills and returns ``out`` (a new all-NaN one if None).

    ``callback(done_indices, out)`` runs after every batch (e.g. to flush partial results to disk).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    n = pts.shape[0]
    if out is None:
        out = PointValues.empty(n)
    elif len(out) != n:
        raise ValueError(f"out holds {len(out)} points, the grid has {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    todo = idx[~out.filled[idx]]  # resume: skip what is already there
    if todo.size == 0:
        return out
    c, dirs = _as_backend(objective, center, directions)
    many = batched_evaluation(objective)
    if pts.shape[1] != len(dirs):
        raise ValueError(f"points have {pts.shape[1]} coordinates but there are {len(dirs)} directions")

    from tqdm.auto import tqdm

    with tqdm(total=todo.size, disable=not progress, desc=desc, unit="pt") as bar:
        for start in range(0, todo.size, batch_size):
            batch = todo[start : start + batch_size]
            for p, ev in zip(batch, _evaluate_batch(objective, many, c, dirs, pts[batch]), strict=True):
                out.loss[p] = ev.loss
                out.accuracy[p] = ev.accuracy
                out.filled[p] = True
            bar.update(batch.size)
            if callback is not None:
                callback(batch, out)
    return out


def evaluate_grid(
    objective: Objective,
    center: Any,
    directions: Any,
    coords: Grid | Sequence[np.ndarray] | np.ndarray,
    *,
    indices: np.ndarray | None = None,
    out: PointValues | None = None,
    progress: bool = True,
    batch_size: int = 1,
    callback: Callable[[np.ndarray, PointValues], None] | None = None,
) -> PointValues:
    """Evaluate the landscape (eq. 1) at the grid's flat points ``indices`` (default all; use
    :func:`chunk_indices` for one MPI rank's share). ``coords`` is a :class:`Grid`, its per-axis
    coordinate arrays, or a ``(P, k)`` array of points. Returns flat values (reshape to ``grid.shape``).
    """
    if isinstance(coords, Grid):
        points = coords.points()
    elif isinstance(coords, np.ndarray) and coords.ndim == 2:
        points = coords
    else:
        points = Grid(tuple(coords)).points()
    return evaluate_points(
        objective,
        center,
        directions,
        points,
        indices=indices,
        out=out,
        progress=progress,
        batch_size=batch_size,
        callback=callback,
        desc="landscape",
    )


def evaluate_trajectory(
    objective: Objective,
    center: Any,
    directions: Any,
    coefficients: np.ndarray,
    *,
    progress: bool = False,
    batch_size: int = 1,
) -> PointValues:
    """Algorithm 1's ``z_i = L(alpha_i phi*_1 + beta_i phi*_2 + theta_n)``: the loss at each checkpoint's
    projection onto the plane (not at the checkpoint itself, which the caller evaluates directly)."""
    return evaluate_points(
        objective,
        center,
        directions,
        coefficients,
        progress=progress,
        batch_size=batch_size,
        desc="trajectory",
    )


# ------------------------------------------------------------------------------------------- result
#: the landscape's arrays with one value per checkpoint of its projected trajectory
PER_CHECKPOINT = ("residuals", "trajectory_loss", "trajectory_accuracy", "checkpoint_loss", "checkpoint_accuracy",
                  "iterations")


@dataclass(frozen=True, eq=False)
class LandscapeResult:
    """A computed landscape and everything needed to plot and store it.

    Grid arrays have ``shape == tuple(len(a) for a in axes)`` (``indexing="ij"``); trajectory arrays have
    one entry per checkpoint. ``method`` names how the directions were found (``"pca"``, ``"random"``,
    ``"eigenvector"``, ``"custom"``, ``"interpolation"``); ``explained_variance_ratio`` (PCA) or
    ``eigenvalues`` (Hessian eigenvectors) label the axes.
    """

    axes: tuple[np.ndarray, ...]
    loss: np.ndarray
    accuracy: np.ndarray | None = None
    filled: np.ndarray | None = None
    trajectory: np.ndarray | None = None  # (n, k) coefficients of the checkpoints
    residuals: np.ndarray | None = None  # (n,) distance of each checkpoint from the plane
    trajectory_loss: np.ndarray | None = None  # (n,) loss at the projected points (Algorithm 1's z_i)
    trajectory_accuracy: np.ndarray | None = None
    checkpoint_loss: np.ndarray | None = None  # (n,) true loss at the checkpoints themselves
    checkpoint_accuracy: np.ndarray | None = None
    iterations: np.ndarray | None = None  # (n,) training iteration of each checkpoint
    center_iteration: int | None = None  # training iteration of the checkpoint at the origin; None: the last one
    method: str = "custom"
    labels: tuple[str, ...] = ()
    normalization: str = "filter"
    explained_variance: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    runs: list | None = None  # the run(s) it belongs to, [{"digest", "label"}] (storage.runs); None: not recorded
    skipped: list = field(default_factory=list)  # [{iteration, reason}]: non-finite checkpoints left out (diverged)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        axes = tuple(np.asarray(a, dtype=np.float64) for a in self.axes)
        set_(self, "axes", axes)
        shape = tuple(a.size for a in axes)
        loss = np.asarray(self.loss, dtype=np.float64).reshape(shape)
        set_(self, "loss", loss)
        acc = np.full(shape, np.nan) if self.accuracy is None else np.asarray(self.accuracy, np.float64)
        set_(self, "accuracy", acc.reshape(shape))
        filled = ~np.isnan(loss) if self.filled is None else np.asarray(self.filled, dtype=bool).reshape(shape)
        set_(self, "filled", filled)
        set_(self, "labels", tuple(str(s) for s in self.labels))
        if self.center_iteration is not None:
            set_(self, "center_iteration", int(self.center_iteration))
        if self.trajectory is not None:
            traj = np.asarray(self.trajectory, dtype=np.float64)
            traj = traj[:, None] if traj.ndim == 1 else traj
            if traj.ndim != 2 or traj.shape[1] != len(axes):
                raise ValueError(f"trajectory must be (n, {len(axes)}), got {traj.shape}")
            set_(self, "trajectory", traj)
        for name in (*PER_CHECKPOINT, "explained_variance", "explained_variance_ratio", "eigenvalues"):
            v = getattr(self, name)
            if v is not None:
                set_(self, name, np.asarray(v).ravel())
        n = None if self.trajectory is None else self.trajectory.shape[0]
        for name in PER_CHECKPOINT:
            v = getattr(self, name)
            if v is not None and n is not None and v.size != n:
                raise ValueError(f"{name} has {v.size} entries for a trajectory of {n} checkpoints")

    @classmethod
    def from_values(cls, grid: Grid, values: PointValues, **kwargs: Any) -> LandscapeResult:
        """Result from a grid and its (flat) evaluated values; ``kwargs`` set the other fields."""
        return cls(
            axes=grid.axes,
            loss=values.loss.reshape(grid.shape),
            accuracy=values.accuracy.reshape(grid.shape),
            filled=values.filled.reshape(grid.shape),
            **kwargs,
        )

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def non_finite_points(self) -> int:
        """Evaluated grid points whose loss is NaN or inf (the model overflowed there)."""
        return int(np.count_nonzero(self.filled & ~np.isfinite(self.loss)))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.loss.shape

    @property
    def grid(self) -> Grid:
        return Grid(self.axes)

    def values(self) -> PointValues:
        """Flat copy of the grid values, e.g. to resume :func:`evaluate_grid` from a saved result."""
        return PointValues(self.loss.ravel().copy(), self.accuracy.ravel().copy(), self.filled.ravel().copy())
