"""Step: Hessian eigenvectors at a checkpoint, as directions for the landscape (paper section 3.2).

    python -m gradvis_steps.eigendirections --trajectory results/run/trajectory.h5 --which largest \\
        --count 2 --steps 40 --out results/run/eigendirections.h5

Lanczos with full reorthogonalization on exact Hessian-vector products over the evaluation subset; the
Ritz pairs asked for (the largest eigenvalues, the most negative ones, or those nearest a value such
as 0) are written with their eigenvalues and true residuals ||H v - lambda v|| to a directions file
that ``gradvis_steps.directions --method hessian`` reads. Under ``mpiexec -n R`` the Hessian products
are data parallel over all R ranks (paper Algorithm 4: each rank a shard of the evaluation batches, one
Allreduce per product; every rank runs the same Lanczos); rank 0 writes. A checkpoint that is not finite
(parameters, recorded batch loss or loss here: the run diverged there) ends the step with one line naming it.
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
    from .storage.directions import Directions

#: which Ritz pairs: the largest eigenvalues, the most negative ones, or those nearest a target
WHICH = ("largest", "smallest", "nearest")


@dataclass(frozen=True, kw_only=True)
class EigendirectionsSettings(step_settings.HessianSettings):
    """Settings of the eigendirections step: the checkpoint, which Ritz pairs, Lanczos, where to write."""

    trajectory: str
    out: str
    iteration: int | None = None
    which: str = schema_default("directions.hessian.which")
    target: float = schema_default("directions.hessian.target")
    count: int = schema_default("directions.hessian.count")
    steps: int = schema_default("directions.hessian.steps")
    seed: int = 0


def add_eigen_arguments(parser: argparse.ArgumentParser, *, per: str = "") -> None:
    """The Lanczos eigenvector options (``--which --target --count --steps --seed``), also the moving frame's (whose
    numbers are ``per`` centre)."""
    per = f" {per}" if per else ""
    parser.add_argument("--which", choices=WHICH,
                        help="largest eigenvalues, most negative ones, or nearest --target")
    parser.add_argument("--target", type=float, help="value for --which nearest")
    parser.add_argument("--count", type=cli.positive_int, help=f"number of eigenvectors{per}")
    parser.add_argument("--steps", type=cli.positive_int, help=f"Lanczos steps{per}")
    parser.add_argument("--seed", type=int, help="seed of the Lanczos starting vector")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.eigendirections",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trajectory", required=True, help="trajectory file (.h5) from the train step")
    parser.add_argument("--out", required=True, type=cli.output_file, help="directions file to write (.h5)")
    parser.add_argument("--iteration", type=int, help="checkpoint to analyse (default: the last)")
    add_eigen_arguments(parser)
    cli.add_evaluation_arguments(parser, hessian=True)
    return step_settings.use_defaults(parser, EigendirectionsSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), EigendirectionsSettings, argv))
    return 0


def run(settings: EigendirectionsSettings) -> Directions | None:
    """Ritz pairs of the Hessian at a checkpoint of ``settings.trajectory``, written to ``settings.out`` as
    directions; returns them on rank 0, None on the other ranks."""
    args = settings
    if args.which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {args.which!r}")
    step_settings.check_positive(args, "count", "steps", "batch_size")
    step_settings.check_fraction("eval_fraction", args.eval_fraction)
    cli.check_outputs(files=(args.out,))
    cli.keep_freed_memory()  # evaluates the model over and over: keep activations' memory in the heap
    if args.count > args.steps:
        raise ValueError(f"--count {args.count} exceeds --steps {args.steps}: Lanczos gives at most one Ritz pair "
                         "per step")

    from .backends import backend_for_trajectory
    from .checkpoints import loss_problem, unusable, usable_or_error
    from .core.lanczos import ritz_pairs
    from .core.parallel import parallel_layout, world
    from .core.slq import starting_vector
    from .provenance import provenance
    from .spectrum import settle_hvp_mode
    from .storage.directions import Directions, save_directions
    from .storage.trajectory import Trajectory

    comm = world()
    layout = parallel_layout(comm, "data")
    with Trajectory(args.trajectory) as traj:
        row = -1 if args.iteration is None else traj.index_of_iteration(args.iteration)
        advice = "take the eigenvectors at an earlier checkpoint (--iteration) or retrain with a lower train.lr"
        usable_or_error(traj, row, "point of the Hessian", advice)
        objective = backend_for_trajectory(traj).objective_for_trajectory(
            traj, fraction=args.eval_fraction, subset_seed=args.eval_seed, batch_size=args.batch_size,
            device=args.device, dtype=args.dtype, buffers_from=row, hvp_memory_mb=args.hvp_memory_mb,
            hvp_mode=args.hvp_mode, data_comm=layout.data)
        theta = objective.from_numpy(traj.params(row))
        reason = loss_problem(objective.evaluate(theta).loss)  # collective under data parallelism: ranks agree
        if reason is not None:
            raise unusable(traj, row, "point of the Hessian", reason, advice)
        hvp = settle_hvp_mode(comm, objective, theta, 1, everyone=True)
        v0 = starting_vector(traj.dim, args.seed, 0, like=theta)
        pairs = ritz_pairs(objective.hvp_operator(theta), v0, args.steps, args.count,  # m capped by lanczos itself
                           which=args.which, target=args.target)
        iteration = int(traj.iterations[row])
        config = step_settings.config_of(args, "out", "no_progress")
        labels = [f"eigenvector {i + 1} (λ={value:.3g})" for i, value in enumerate(pairs.values)]
        result = Directions(
            vectors=objective.to_numpy(pairs.vectors).astype(np.float32), method="eigenvector", labels=tuple(labels),
            normalization="none", center_iteration=iteration, eigenvalues=pairs.values, residuals=pairs.residuals,
            config={**config, "run": traj.config},
            provenance=provenance(config, hvp=hvp, ranks=comm.size, **layout.record()), runs=[traj.run],
        )
    comm.barrier()
    if comm.rank != 0:
        return None
    save_directions(result, args.out)
    for value, residual in zip(pairs.values, pairs.residuals, strict=True):
        flag = "" if residual <= 1e-2 * max(abs(value), 1e-12) else "  (not converged: raise --steps)"
        print(f"λ = {value:.6g}, ||Hv - λv|| = {residual:.2e}{flag}", file=sys.stderr)
    print(f"wrote {args.count} {args.which} eigenvectors at iteration {iteration} to {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(cli.run(main))
