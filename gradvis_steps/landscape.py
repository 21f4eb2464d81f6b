"""Step: the loss landscape around a checkpoint along given directions, with the projected trajectory.

    python -m gradvis_steps.landscape --trajectory results/run/trajectory.h5 \\
        --directions results/run/directions/pca.h5 --resolution 25 --out results/run/landscape/pca.h5

Algorithm 1 (and 3 under MPI): project every checkpoint on the directions (least squares), span a grid
over the projected trajectory's bounding box plus a border (paper: 40%), evaluate loss and accuracy at
each grid point on the evaluation subset, and evaluate the loss at the projected points and at the
checkpoints themselves. Started with ``mpiexec -n R``, the grid is split into R contiguous chunks and
gathered on rank 0 (MPI_Gatherv). Partial results are flushed to ``<out>.partial-*.npz`` so an
interrupted run resumes where it stopped, with any number of ranks. The directions must belong to the
trajectory's run (the first of their pair for an interpolation plane); the landscape records the directions' run(s).

Divergence: a centre checkpoint that is not finite (parameters, recorded batch loss or its loss here) ends the step
with one line naming it. Any other such checkpoint is skipped with a warning: its coordinates and losses are NaN,
it does not widen the grid, and it is listed in the file's ``skipped`` attribute. Grid points whose loss overflows
are stored as they evaluate (NaN or inf), counted in the attribute ``non_finite_points`` and masked in the plots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import cli, step_settings
from .defaults import schema_default
from .provenance import file_sha256

if TYPE_CHECKING:
    from .core.grid import LandscapeResult

FLUSH_SECONDS = 10.0
POINTS_PER_CALL = 16  # grid points per batched objective call (one host sync each), between flushes
#: on an accelerator: more points per call, so a vectorized forward pass (--grid-batching vmap) has work to batch
ACCELERATOR_POINTS_PER_CALL = 256


@dataclass(frozen=True, kw_only=True)
class LandscapeSettings(step_settings.EvaluationSettings):
    """Settings of the landscape step: the trajectory and directions, the grid, where to write (see the module)."""

    trajectory: str
    directions: str
    out: str
    dims: int = 2
    resolution: int = schema_default("landscape.resolution")
    border: float = schema_default("landscape.border")
    range: tuple[float, ...] | None = None
    min_extent: float = 1.0
    grid_batching: str = schema_default("landscape.grid_batching")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.landscape", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trajectory", required=True, help="trajectory file (.h5) from the train step")
    parser.add_argument("--directions", required=True, help="directions file (.h5) from the directions step")
    parser.add_argument("--out", required=True, type=cli.output_file, help="landscape file to write (.h5)")
    parser.add_argument("--dims", type=int, choices=(1, 2), help="1: a line, 2: a plane")
    parser.add_argument("--resolution", type=cli.positive_int, help="grid points per axis (paper: 50)")
    parser.add_argument("--border", type=float,
                        help="extend the trajectory's bounding box by this fraction of its extent per side")
    parser.add_argument("--range", type=float, nargs="+", metavar="LIMIT",
                        help="explicit ranges instead: XMIN XMAX [YMIN YMAX]")
    parser.add_argument("--min-extent", type=float,
                        help="smallest extent of an axis when the trajectory barely moves along it")
    cli.add_evaluation_arguments(parser)
    parser.add_argument("--grid-batching", choices=("auto", "vmap", "per_point"),
                        help="evaluate the grid points of one call in one vectorized forward pass (vmap), one by one "
                             "(per_point), or whichever a short timing at the first call finds faster (auto); the "
                             "choice is recorded in the output's provenance")
    return step_settings.use_defaults(parser, LandscapeSettings)


def explicit_ranges(values: Sequence[float] | None, dims: int) -> list[tuple[float, float]] | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != 2 * dims:
        raise ValueError(f"--range needs {2 * dims} numbers for {dims} dimension(s), got {len(values)}: {values}")
    ranges = [(values[2 * k], values[2 * k + 1]) for k in range(dims)]
    bad = [r for r in ranges if not r[0] < r[1]]
    if bad:
        raise ValueError(f"--range limits must increase (min < max), got {bad}")
    return ranges


class PartialStore:
    """Per-rank flushes of evaluated grid points, merged on restart whatever the number of ranks."""

    def __init__(self, out: Path, signature: str, rank: int):
        self.pattern = f".{out.name}.partial-*.npz"
        self.folder = out.parent
        self.path = out.parent / f".{out.name}.partial-{rank}.npz"
        self.signature = signature
        self.last_flush = time.monotonic()

    def load_into(self, values: object) -> int:
        """Fill ``values`` from every matching partial file; returns how many points were restored."""
        restored = 0
        for path in self.folder.glob(self.pattern):
            try:
                with np.load(path) as data:
                    if str(data["signature"]) != self.signature:
                        continue
                    idx, loss, accuracy = data["indices"], data["loss"], data["accuracy"]
            except (OSError, ValueError, KeyError):
                continue  # a torn or foreign file: recompute those points
            values.loss[idx], values.accuracy[idx], values.filled[idx] = loss, accuracy, True
            restored += len(idx)
        return restored

    def flush(self, values: object, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_flush < FLUSH_SECONDS:
            return
        from .storage.atomic import atomic_path

        idx = np.flatnonzero(values.filled)
        with atomic_path(self.path, ".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, signature=self.signature, indices=idx, loss=values.loss[idx],
                         accuracy=values.accuracy[idx])
        self.last_flush = time.monotonic()

    def remove_all(self) -> None:
        for path in self.folder.glob(self.pattern):
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), LandscapeSettings, argv))
    return 0


def run(settings: LandscapeSettings) -> LandscapeResult | None:
    """The landscape of ``settings.trajectory`` along ``settings.directions``, written to ``settings.out``; returns
    what was written on rank 0, None on the other ranks."""
    args = settings
    if args.dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {args.dims!r}")
    step_settings.check_positive(args, "resolution", "batch_size")
    step_settings.check_fraction("eval_fraction", args.eval_fraction)
    cli.check_outputs(files=(args.out,))
    cli.keep_freed_memory()  # evaluates the model over and over: keep activations' memory in the heap
    ranges = explicit_ranges(args.range, args.dims)
    if not 0 <= args.border <= 10:
        raise ValueError(f"--border must be in [0, 10], got {args.border}")

    from .backends import backend_for_trajectory
    from .checkpoints import checkpoint_problem, loss_problem, skip_checkpoint, unusable, usable_or_error
    from .core.grid import Grid, LandscapeResult, PointValues, evaluate_grid, evaluate_trajectory
    from .core.objective import batching_record
    from .core.parallel import distributed_values, world
    from .core.projection import project_trajectory
    from .provenance import provenance
    from .storage import runs
    from .storage.directions import load_directions_file
    from .storage.landscape import save_landscape
    from .storage.trajectory import Trajectory

    comm = world()
    out = Path(args.out)
    directions = load_directions_file(args.directions)
    if len(directions) < args.dims:
        raise ValueError(f"{args.directions} holds {len(directions)} direction(s); --dims {args.dims} needs more")
    vectors = np.asarray(directions.vectors[: args.dims], dtype=np.float64)
    progress = not args.no_progress and comm.rank == 0
    with Trajectory(args.trajectory) as traj:
        runs.check_trajectory(runs.Source.of_trajectory(traj, args.trajectory),
                              runs.Source("directions file", args.directions, directions.runs), warn=comm.rank == 0)
        # an older directions file records no run: the trajectory's, unless it is a plane of two runs
        belongs_to = directions.runs if directions.runs is not None else (
            None if directions.method == "interpolation" else [traj.run])
        if vectors.shape[1] != traj.dim:
            raise ValueError(f"{args.directions} has vectors of length {vectors.shape[1]}, "
                             f"{args.trajectory} has {traj.dim} parameters")
        center_index = -1 if directions.center_iteration is None else traj.index_of_iteration(
            directions.center_iteration)
        advice = ("centre the landscape on an earlier checkpoint (directions --center-iteration) or retrain with a "
                  "lower train.lr")
        usable_or_error(traj, center_index, "centre of the landscape", advice)
        center = traj.params(center_index).astype(np.float64)
        objective = backend_for_trajectory(traj).objective_for_trajectory(
            traj, fraction=args.eval_fraction, subset_seed=args.eval_seed, batch_size=args.batch_size,
            device=args.device, dtype=args.dtype, buffers_from=center_index, grid_batching=args.grid_batching)
        problems = {row: checkpoint_problem(traj, row) for row in range(len(traj))}

        def checkpoint_chunk(indices: np.ndarray) -> np.ndarray:
            rows = []
            for i in indices:  # the true loss at each checkpoint, with that checkpoint's BN statistics
                if problems[int(i)] is not None:
                    rows.append((np.nan, np.nan))  # not evaluated: skipped below
                    continue
                if traj.buffer_layout:
                    objective.set_buffers(traj.buffers(int(i)), traj.buffer_layout)
                ev = objective.evaluate(objective.from_numpy(traj.params(int(i))))
                rows.append((ev.loss, ev.accuracy))
            return np.asarray(rows, dtype=np.float64).reshape(len(indices), 2)

        # first the checkpoints: one whose loss does not evaluate finite must not span the grid
        checkpoints = comm.bcast(distributed_values(comm, len(traj), 2, checkpoint_chunk))  # every rank spans the grid
        if traj.buffer_layout:
            objective.set_buffers(traj.buffers(center_index), traj.buffer_layout)  # back to the centre's
        for row in range(len(traj)):
            problems[row] = problems[row] or loss_problem(checkpoints[row, 0])
        if problems[center_index % len(traj)] is not None:
            raise unusable(traj, center_index, "centre of the landscape", problems[center_index % len(traj)], advice)
        skipped: list[dict] = []
        bad_rows = [row for row in range(len(traj)) if problems[row] is not None]
        for row in bad_rows:
            if comm.rank == 0:
                skip_checkpoint(skipped, args.trajectory, int(traj.iterations[row]), problems[row])
        # Algorithm 1: alpha_i, beta_i from theta_i - theta_n = alpha_i phi_1 + beta_i phi_2 (least squares).
        projection = project_trajectory(traj.params, len(traj), vectors, center)
        projection.coefficients[bad_rows] = np.nan  # off the plot and out of the grid's range
        grid = (Grid.from_ranges(ranges, args.resolution) if ranges else
                Grid.from_trajectory(projection.coefficients, args.resolution, border=args.border,
                                     min_extent=args.min_extent))
        per_call = POINTS_PER_CALL if objective.device_type == "cpu" else ACCELERATOR_POINTS_PER_CALL
        config = step_settings.config_of(args, "out", "no_progress")
        # the same values whichever path evaluates them (to float rounding): a resume may change --grid-batching
        same_points = {key: value for key, value in config.items() if key != "grid_batching"}
        signature = json.dumps({**same_points, "axes": [a.tolist() for a in grid.axes], "run": traj.run["digest"],
                                "directions_digest": file_sha256(args.directions)[:16]}, sort_keys=True)
        signature = hashlib.sha256(signature.encode()).hexdigest()
        partial = PartialStore(out, signature, comm.rank)
        values = PointValues.empty(grid.n_points)
        restored = partial.load_into(values)
        if restored and comm.rank == 0:  # logged also under --no-progress (the workflow's rules)
            print(f"resuming: {restored} of {grid.n_points} grid points restored", file=sys.stderr)

        def grid_chunk(indices: np.ndarray) -> np.ndarray:
            try:
                evaluate_grid(objective, center, vectors, grid, indices=indices, out=values, progress=progress,
                              batch_size=per_call, callback=lambda _, v: partial.flush(v))
            finally:  # interrupted or failed: keep every point evaluated so far for the rerun
                partial.flush(values, force=True)
            return np.stack([values.loss[indices], values.accuracy[indices]], axis=1)

        start = time.perf_counter()
        grid_values = distributed_values(comm, grid.n_points, 2, grid_chunk)
        grid_seconds = time.perf_counter() - start

        def projected_chunk(indices: np.ndarray) -> np.ndarray:
            v = evaluate_trajectory(objective, center, vectors, projection.coefficients[indices],
                                    batch_size=per_call)
            return np.stack([v.loss, v.accuracy], axis=1)

        projected = distributed_values(comm, len(traj), 2, projected_chunk)
        if comm.rank == 0:
            result = LandscapeResult(
                axes=grid.axes, loss=grid_values[:, 0].reshape(grid.shape),
                accuracy=grid_values[:, 1].reshape(grid.shape),
                filled=np.ones(grid.shape, dtype=bool),
                trajectory=projection.coefficients, residuals=projection.residuals,
                trajectory_loss=projected[:, 0], trajectory_accuracy=projected[:, 1],
                checkpoint_loss=checkpoints[:, 0], checkpoint_accuracy=checkpoints[:, 1],
                iterations=traj.iterations, center_iteration=int(traj.iterations[center_index]),
                method=directions.method, labels=directions.labels,
                normalization=directions.normalization, explained_variance=directions.explained_variance,
                explained_variance_ratio=directions.explained_variance_ratio, eigenvalues=directions.eigenvalues,
                config={**config, "directions_config": directions.config, "run": traj.config}, skipped=skipped,
                provenance=provenance(config, ranks=comm.size, grid_seconds=round(grid_seconds, 3),
                                      seconds_per_point=grid_seconds * comm.size / max(grid.n_points, 1),
                                      grid_batching=batching_record(objective)),
                runs=belongs_to,
            )
            save_landscape(result, out)
            partial.remove_all()
            if result.non_finite_points:
                print(f"warning: {result.non_finite_points} of {grid.n_points} grid points have a non-finite loss "
                      "(stored as evaluated, masked in the plots)", file=sys.stderr)
            print(f"wrote {grid.shape} landscape ({comm.size} rank(s), {grid_seconds:.1f} s) to {out}",
                  file=sys.stderr)
    comm.barrier()
    return result if comm.rank == 0 else None


if __name__ == "__main__":
    sys.exit(cli.run(main))
