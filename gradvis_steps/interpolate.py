"""Step: interpolation between two minima (paper section 3.4): loss along the line and spectra on it.

    python -m gradvis_steps.interpolate --trajectory-a results/A/trajectory.h5 \\
        --trajectory-b results/B/trajectory.h5 --points 20 --out-line line.h5 --out-spectra spectra.h5

The final points of two runs (e.g. two seeds) are joined by the straight line
theta(t) = (1 - t) theta_A + t theta_B; at each of ``--points`` values of t (plus an optional margin
beyond both ends) the loss and accuracy on the evaluation subset and the Hessian's SLQ spectrum are
computed. Batch-norm statistics are interpolated the same way. Under ``mpiexec`` the spectra run
iteration-, data- or hybrid-parallel (``--parallel``, as in the spectrum step; data and hybrid also
shard the line's loss evaluations); rank 0 writes. The line is written as a 1D landscape
(plot it with ``plot_landscape --line``), the spectra as a spectra file keyed by point index; both record the
pair of runs (A, B) they belong to (``storage.runs``).

Divergence: a final point that is not finite (parameters or buffers: the run diverged) ends the step with one line
naming it. A point of the line whose loss (or Hessian-vector products) is not finite keeps that loss in the line
(counted in its ``non_finite_points``) and is left out of the spectra with a warning, listed in their ``skipped``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import cli, step_settings
from .defaults import schema_default

if TYPE_CHECKING:
    from .core.grid import LandscapeResult
    from .storage.spectra import Spectra


@dataclass(frozen=True, kw_only=True)
class InterpolateSettings(step_settings.SLQSettings):
    """Settings of the interpolate step: the two runs, the points of the line, SLQ at each, the files to write."""

    trajectory_a: str
    trajectory_b: str
    out_line: str
    out_spectra: str | None = None
    points: int = schema_default("interpolation.points")
    margin: float = 0.0


@dataclass(frozen=True)
class Interpolation:
    """What the interpolate step wrote: the line (a 1D landscape over t) and the spectra at its points (or None)."""

    line: LandscapeResult
    spectra: Spectra | None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.interpolate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trajectory-a", required=True, help="trajectory of the first run (t = 0)")
    parser.add_argument("--trajectory-b", required=True, help="trajectory of the second run (t = 1)")
    parser.add_argument("--out-line", required=True, type=cli.output_file, help="line landscape to write (.h5)")
    parser.add_argument("--out-spectra", type=cli.output_file,
                        help="spectra at the line's points to write (.h5); skipped if absent")
    parser.add_argument("--points", type=cli.positive_int, help="points on the line (paper: 20)")
    parser.add_argument("--margin", type=float, help="extend the line by this fraction beyond each end")
    cli.add_slq_arguments(parser)
    cli.add_parallel_arguments(parser)
    cli.add_evaluation_arguments(parser, hessian=True)
    return step_settings.use_defaults(parser, InterpolateSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), InterpolateSettings, argv))
    return 0


def run(settings: InterpolateSettings) -> Interpolation | None:
    """The line between the final points of ``settings.trajectory_a`` and ``settings.trajectory_b`` and its spectra,
    written to ``settings.out_line`` (and ``settings.out_spectra``); returns them on rank 0, None elsewhere."""
    args = settings
    step_settings.check_positive(args, "points", "k", "m", "batch_size")
    step_settings.check_fraction("eval_fraction", args.eval_fraction)
    cli.check_outputs(files=(args.out_line, args.out_spectra))
    cli.keep_freed_memory()  # evaluates the model over and over: keep activations' memory in the heap
    if not 0 <= args.margin <= 5:
        raise ValueError(f"--margin must be in [0, 5], got {args.margin}")
    if args.points < 2:
        raise ValueError(f"--points must be >= 2 to draw a line, got {args.points}")
    cli.check_sigma(args.sigma)

    from tqdm.auto import tqdm

    from .backends import backend_for_trajectory
    from .checkpoints import UnusableCheckpoint, loss_problem, skip_checkpoint, usable_or_error
    from .core.grid import LandscapeResult
    from .core.lanczos import lanczos_steps
    from .core.parallel import parallel_layout, world
    from .provenance import provenance
    from .spectrum import point_spectrum, resolve_group_size, settle_hvp_mode, stored_sigma_rule, warn_uneven_groups
    from .storage.landscape import save_landscape
    from .storage.spectra import Spectra, save_spectra
    from .storage.trajectory import Trajectory

    comm = world()
    layout = parallel_layout(comm, args.parallel, args.ranks_per_group)
    warn_uneven_groups(layout)
    with Trajectory(args.trajectory_a) as traj_a, Trajectory(args.trajectory_b) as traj_b:
        if traj_a.layout != traj_b.layout:
            raise ValueError(f"{args.trajectory_a} and {args.trajectory_b} hold different models "
                             f"({traj_a.dim} vs {traj_b.dim} parameters or other tensor shapes)")
        objective = backend_for_trajectory(traj_a).objective_for_trajectory(
            traj_a, fraction=args.eval_fraction, subset_seed=args.eval_seed, batch_size=args.batch_size,
            device=args.device, dtype=args.dtype, hvp_memory_mb=args.hvp_memory_mb, hvp_mode=args.hvp_mode,
            data_comm=layout.data)
        group_size = resolve_group_size(args.group_size, args.k, objective.device_type, layout.n_groups)
        theta_a, theta_b = traj_a.params(-1).astype(np.float64), traj_b.params(-1).astype(np.float64)
        buffers_a, buffers_b = traj_a.buffers(-1), traj_b.buffers(-1)
        pair = [traj_a.run, traj_b.run]
        ts = np.linspace(-args.margin, 1 + args.margin, args.points)
        config = step_settings.config_of(args, "out_line", "out_spectra", "no_progress")
        for traj, run in ((traj_a, "A"), (traj_b, "B")):
            usable_or_error(traj, -1, f"final point of run {run}", f"retrain run {run} with a lower train.lr or "
                            "train.on_divergence: keep")
        m = lanczos_steps(args.m, traj_a.dim)
        spectra = Spectra({}, {"dim": traj_a.dim, "k": args.k, "m": m, "seed": args.seed,
                               "skipped": [], "vector_kind": args.vector, "t": ts.tolist(), "group_size": group_size,
                               "sigma_rule": stored_sigma_rule(args.sigma),
                               "config": {**config, "run_a": traj_a.config, "run_b": traj_b.config},
                               "provenance": provenance(config, ranks=comm.size, **layout.record()),
                               "runs": pair})
        losses, accuracies = np.empty(len(ts)), np.empty(len(ts))
        for index, t in enumerate(tqdm(ts, desc="interpolation", unit="pt",
                                       disable=args.no_progress or comm.rank != 0)):
            if traj_a.buffer_layout:
                objective.set_buffers((1 - t) * buffers_a + t * buffers_b, traj_a.buffer_layout)
            theta = objective.from_numpy((1 - t) * theta_a + t * theta_b)
            evaluation = objective.evaluate(theta)
            losses[index], accuracies[index] = evaluation.loss, evaluation.accuracy
            if args.out_spectra:
                reason = loss_problem(evaluation.loss)  # the same on every rank: they skip the point together
                if reason is None:
                    if "hvp" not in spectra.attrs["provenance"]:  # the first point computed
                        spectra.attrs["provenance"]["hvp"] = settle_hvp_mode(comm, objective, theta, group_size,
                                                                             everyone=layout.ranks_per_group > 1)
                    try:
                        entry = point_spectrum(comm, objective, theta, index, k=args.k, m=m,
                                               seed=args.seed, kind=args.vector, sigma=args.sigma,
                                               group_size=group_size, ranks_per_group=layout.ranks_per_group)
                    except UnusableCheckpoint as error:  # rank 0 only, after the point's last collective
                        reason = error.reason
                if reason is not None:
                    if comm.rank == 0:
                        skip_checkpoint(spectra.attrs["skipped"], "interpolation", index, reason,
                                        what=f"spectrum at t = {t:.3g}, point", why="the loss overflows there")
                elif entry is not None:
                    spectra.entries[index] = entry
        if comm.rank == 0:
            distance = float(np.linalg.norm(theta_b - theta_a))
            line = LandscapeResult(axes=(ts,), loss=losses, accuracy=accuracies, filled=np.ones(len(ts), dtype=bool),
                                   method="interpolation",
                                   labels=(f"t: (1-t) θ_A + t θ_B   (|θ_B - θ_A| = {distance:.3g})",),
                                   normalization="none", config={**config, "distance": distance},
                                   provenance=provenance(config, ranks=comm.size, **layout.record()), runs=pair)
            save_landscape(line, args.out_line)
            if args.out_spectra:
                save_spectra(spectra, args.out_spectra)
            finite = losses[np.isfinite(losses)]
            span = f"loss {finite.min():.3g}..{finite.max():.3g}" if finite.size else "no finite loss"
            if line.non_finite_points:
                span += f", {line.non_finite_points} of {len(ts)} points non-finite"
            print(f"interpolated {len(ts)} points between {args.trajectory_a} and {args.trajectory_b} "
                  f"(distance {distance:.3g}): {span}", file=sys.stderr)
    comm.barrier()
    return Interpolation(line, spectra if args.out_spectra else None) if comm.rank == 0 else None


if __name__ == "__main__":
    sys.exit(cli.run(main))
