"""The loss landscape of a model around its parameters, from Python (paper eq. 1, Algorithm 1):

    from gradvis_steps.api import directions, landscape
    surface = landscape(model, (x, y), "cross_entropy", directions.random(model, seed=0), resolution=21)
    surface.plot(); surface.save("landscape.h5")

``L(theta + a d_1 + b d_2)`` on a grid of ``(a, b)``, evaluated on the data by the landscape step's functions
(:func:`gradvis_steps.core.grid.evaluate_grid`, the same points per batched call), so the numbers are the step's.
The grid spans ``range`` (default ``[-1, 1]`` per axis, Li et al.'s), or, given a recorded ``trajectory`` file, the
bounding box of its checkpoints projected on the directions plus ``border`` (the step's rule), with the projected
path and its loss stored for the plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import landscape as landscape_step
from ..core.grid import LandscapeResult
from ..landscape import LandscapeSettings
from ..provenance import provenance
from .directions import DirectionSet
from .inputs import problem, setting_default
from .io import Directions, load_directions_file, plotting, save_landscape

#: the grid of a landscape without a trajectory and without ``range``: Li et al.'s [-1, 1] per axis
DEFAULT_RANGE = (-1.0, 1.0)


@dataclass(frozen=True, eq=False)
class Landscape(LandscapeResult):
    """A computed landscape: the landscape step's result (``axes``, ``loss`` and ``accuracy`` of shape
    ``tuple(len(a) for a in axes)``, the projected ``trajectory`` where one was given, direction labels), plus
    :meth:`save` and :meth:`plot`."""

    def save(self, path: str | Path) -> Path:
        """Write a landscape file (format ``gradvis-landscape``), atomically, as the landscape step does:
        ``plot_landscape`` and ``compare`` read it."""
        save_landscape(self, path)
        return Path(path)

    def plot(self, kind: str = "contour", **options: Any) -> Any:
        """A matplotlib Figure: ``"contour"`` (2-D, with the trajectory), ``"surface"`` (2-D, 3-D view) or, for a
        line, the 1-D loss curve whatever ``kind``; ``options`` go to the step's plot function (e.g.
        ``log_levels=True``)."""
        draw = plotting()
        if self.ndim == 1:
            return draw.plot_line(self, **options)
        if kind not in ("contour", "surface"):
            raise ValueError(f"kind {kind!r} is not one of contour, surface")
        return (draw.plot_contour if kind == "contour" else draw.plot_surface)(self, **options)


def _directions(directions: Any, model: Any) -> Directions:
    """A direction set from what the user gave: None (two filter-normalized random directions, seed 0), a
    direction set, a directions file, or an array ``(k, dim)``."""
    from .directions import random

    if directions is None:
        return random(model)
    if isinstance(directions, Directions):
        return directions
    if isinstance(directions, (str, Path)):
        return load_directions_file(directions)
    vectors = np.asarray(directions)
    if vectors.ndim != 2:
        raise ValueError(f"directions as an array must be (k, dim), got shape {vectors.shape}")
    return DirectionSet(vectors, "custom", tuple(f"direction {i + 1}" for i in range(len(vectors))), "none")


def landscape(model: Any, data: Any, loss: str | dict | None = "cross_entropy", directions: Any = None, *,
              resolution: int = setting_default(LandscapeSettings, "resolution"),
              border: float = setting_default(LandscapeSettings, "border"),
              range: Sequence[float] | None = None, dims: int = 2, trajectory: str | Path | None = None,  # noqa: A002
              min_extent: float = setting_default(LandscapeSettings, "min_extent"), batch_size: int | None = None,
              device: str | None = None, dtype: str | None = None,
              grid_batching: str = setting_default(LandscapeSettings, "grid_batching")) -> Landscape:
    """The loss (and accuracy, for a classification loss) of ``model`` over ``data`` on a ``resolution``-point-per-
    axis grid in the plane (``dims=2``) or line (``dims=1``) of ``directions`` through the model's parameters.

    ``directions``: a :class:`~gradvis_steps.api.directions.DirectionSet` (``directions.random``/``pca``/``eigen``),
    a directions file, an array ``(k, dim)``, or None (random, filter-normalized, seed 0). ``range``: ``XMIN XMAX
    [YMIN YMAX]``; ``trajectory``: a recorded trajectory file of this model whose projection spans the grid (with
    ``border``, ``min_extent``) and is drawn. Evaluation settings as for :func:`~gradvis_steps.api.hessian`;
    ``grid_batching`` as the landscape step's."""
    from ..core.grid import Grid, evaluate_grid, evaluate_trajectory
    from ..core.objective import batching_record

    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    if int(resolution) < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    if not 0 <= border <= 10:
        raise ValueError(f"border must be in [0, 10], got {border}")
    ranges = landscape_step.explicit_ranges(range, dims)
    prob = problem(model, data, loss, batch_size=batch_size, device=device, dtype=dtype, grid_batching=grid_batching)
    found = _directions(directions, model)
    if len(found) < dims:
        raise ValueError(f"{len(found)} direction(s) given; dims={dims} needs {dims}")
    vectors = np.asarray(found.vectors[:dims], dtype=np.float64)
    if vectors.shape[1] != prob.dim:
        raise ValueError(f"the directions have length {vectors.shape[1]}, the model has {prob.dim} parameters")
    center = np.asarray(prob.backend.flat_parameters(model)).astype(np.float64)
    path: dict[str, Any] = {}
    skipped: list[dict] = []
    if trajectory is not None:
        path, skipped = _projected(trajectory, vectors, center, prob.dim)
    if ranges is None and trajectory is None:
        ranges = [DEFAULT_RANGE] * dims
    grid = (Grid.from_ranges(ranges, int(resolution)) if ranges else
            Grid.from_trajectory(path["trajectory"], int(resolution), border=border, min_extent=min_extent))
    objective = prob.objective
    per_call = (landscape_step.POINTS_PER_CALL if objective.device_type == "cpu"
                else landscape_step.ACCELERATOR_POINTS_PER_CALL)
    values = evaluate_grid(objective, center, vectors, grid, progress=False, batch_size=per_call)
    if path:
        along = evaluate_trajectory(objective, center, vectors, path["trajectory"], batch_size=per_call)
        path.update(trajectory_loss=along.loss, trajectory_accuracy=along.accuracy)
    config = {"resolution": int(resolution), "border": border, "range": None if range is None else list(range),
              "dims": dims, "trajectory": None if trajectory is None else str(trajectory), "min_extent": min_extent,
              "batch_size": int(objective.batch_size), "dtype": prob.dtype, "loss": prob.loss,
              "framework": prob.framework, "directions_config": found.config, "source": "gradvis_steps.api"}
    return Landscape(axes=grid.axes, loss=values.loss.reshape(grid.shape), accuracy=values.accuracy.reshape(grid.shape),
                     filled=values.filled.reshape(grid.shape), method=found.method, labels=found.labels,
                     normalization=found.normalization, explained_variance=found.explained_variance,
                     explained_variance_ratio=found.explained_variance_ratio, eigenvalues=found.eigenvalues,
                     config=config, provenance=provenance(config, grid_batching=batching_record(objective)),
                     skipped=skipped, **path)


def _projected(trajectory: str | Path, vectors: np.ndarray, center: np.ndarray, dim: int) -> tuple[dict, list]:
    """The checkpoints of a trajectory file projected on the directions through ``center`` (least squares, Algorithm
    1), as the landscape step does; non-finite checkpoints are left out (NaN) and listed."""
    from ..checkpoints import checkpoint_problem, skip_checkpoint
    from ..core.projection import project_trajectory
    from ..storage.trajectory import Trajectory

    with Trajectory(str(trajectory)) as traj:
        if traj.dim != dim:
            raise ValueError(f"{trajectory} holds {traj.dim} parameters, the model has {dim}")
        skipped: list[dict] = []
        bad = []
        for row in range(len(traj)):
            reason = checkpoint_problem(traj, row)
            if reason is not None:
                bad.append(row)
                skip_checkpoint(skipped, str(trajectory), int(traj.iterations[row]), reason)
        projection = project_trajectory(traj.params, len(traj), vectors, center)
        projection.coefficients[bad] = np.nan
        return {"trajectory": projection.coefficients, "residuals": projection.residuals,
                "iterations": np.asarray(traj.iterations)}, skipped
