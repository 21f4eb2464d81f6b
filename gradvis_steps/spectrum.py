"""Step: the Hessian's eigenvalue density at checkpoints, by stochastic Lanczos quadrature (Algorithm 2).

    python -m gradvis_steps.spectrum --trajectory results/run/trajectory.h5 --every 2 --k 10 --m 80 \\
        --out results/run/spectra.h5 --plot-dir results/run/spectra

For each selected checkpoint: k normalized random starting vectors (stream depends only on seed and
vector index), m Lanczos steps each with full reorthogonalization on exact Hessian-vector products
over the evaluation subset; the raw nodes and weights, the smoothed density (eq. 4-8) and derived
figures (Hutchinson trace, extreme eigenvalues, negative mass) are stored. A checkpoint whose parameters,
recorded batch loss, evaluated loss or Hessian-vector products are not finite (the run diverged there) is skipped
with a warning and listed in the file's ``skipped`` attribute. Under ``mpiexec -n R`` the k
starting vectors of each checkpoint are split over the ranks (``--parallel iteration``, Algorithm 5; the
result equals the serial one bitwise), or every rank runs all chains over a shard of the evaluation
batches (``--parallel data``, Algorithm 4), or both (``--parallel hybrid --ranks-per-group D``); rank 0
gathers and writes. Finished checkpoints are kept in ``<out>.partial`` so an interrupted run resumes (not from a
partial file of other settings or of another run: that one is started over).

``--blocks`` adds per-block spectra: for each block of parameters ``S`` (``per_layer``: one per layer, the
parameters sharing a module prefix; or fnmatch patterns over the parameter names, see
:func:`~.core.layout.parameter_blocks`) the same SLQ (same k, m, seed: vector i is stream (seed, i) in the block's
dimension) of the principal submatrix ``H[S, S]``, plus its top Ritz pair's value and true residual (``ritz_top``,
``ritz_top_residual``: m Lanczos steps from vector 0), stored beside the whole model's spectrum
(:mod:`.storage.spectra`). ``whole`` (the default, alone) is the whole model's spectrum, always computed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import cli, step_settings
from .defaults import schema_default

if TYPE_CHECKING:
    from .core.objective import Array, Objective
    from .core.parallel import MPIComm, ParallelLayout, SerialComm
    from .storage.spectra import CheckpointSpectrum, Spectra

#: Eigenvalues below ``-NEGATIVE_TOL * max|lambda|`` count as negative mass. A few Lanczos steps in float32
#: resolve the dense bulk near zero no finer than that: with a smaller threshold about half of that bulk
#: counts as "negative" whatever the true curvature (it read 49 % on the default LeNet).
NEGATIVE_TOL = 1e-3


@dataclass(frozen=True, kw_only=True)
class SpectrumSettings(step_settings.SLQSettings):
    """Settings of the spectrum step: which checkpoints of which trajectory, SLQ, where to write (see the module)."""

    trajectory: str
    out: str
    every: int = schema_default("spectra.every")
    blocks: tuple[str, ...] = tuple(schema_default("spectra.blocks"))
    iterations: tuple[int, ...] | None = None
    chunk: str | None = None
    plot_dir: str | None = None
    log_scale: bool = schema_default("frames.log_scale")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.spectrum", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trajectory", required=True, help="trajectory file (.h5) from the train step")
    parser.add_argument("--out", required=True, type=cli.output_file, help="spectra file to write (.h5)")
    parser.add_argument("--every", type=cli.positive_int, help="every k-th checkpoint (the last one always)")
    parser.add_argument("--iterations", type=int, nargs="+", help="exactly these iterations instead")
    parser.add_argument("--chunk", help="only part i of n of the selected checkpoints, as i/n (scatter jobs)")
    parser.add_argument("--blocks", nargs="+", type=block_item,
                        help="Hessian blocks besides the whole model: whole, per_layer or parameter-name patterns")
    cli.add_slq_arguments(parser)
    cli.add_parallel_arguments(parser)
    parser.add_argument("--plot-dir", type=cli.output_folder, help="also write one density plot per checkpoint here")
    parser.add_argument("--log-scale", action=argparse.BooleanOptionalAction, help="log-scale density axis in plots")
    cli.add_evaluation_arguments(parser, hessian=True)
    return step_settings.use_defaults(parser, SpectrumSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), SpectrumSettings, argv))
    return 0


def run(settings: SpectrumSettings) -> Spectra | None:
    """SLQ spectra of the selected checkpoints of ``settings.trajectory``, written to ``settings.out`` (and density
    plots to ``settings.plot_dir``); returns what was written on rank 0, None on the other ranks."""
    args = settings
    step_settings.check_positive(args, "every", "k", "m", "batch_size")
    step_settings.check_fraction("eval_fraction", args.eval_fraction)
    cli.keep_freed_memory()  # evaluates the model over and over: keep activations' memory in the heap
    cli.check_sigma(args.sigma)
    cli.check_outputs(files=(args.out,), folders=(args.plot_dir,))

    from .backends import backend_for_trajectory
    from .checkpoints import UnusableCheckpoint, checkpoint_problem, loss_problem, select_rows, skip_checkpoint
    from .core.lanczos import lanczos_steps
    from .core.layout import parameter_blocks
    from .core.parallel import parallel_layout, world
    from .provenance import provenance
    from .storage import runs
    from .storage.atomic import unless_unreadable
    from .storage.spectra import Spectra, load_spectra, save_spectra
    from .storage.trajectory import Trajectory

    comm = world()
    layout = parallel_layout(comm, args.parallel, args.ranks_per_group)
    warn_uneven_groups(layout)
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    config = step_settings.config_of(args, "out", "no_progress", "plot_dir")
    with Trajectory(args.trajectory) as traj:
        rows = select_rows(traj.iterations, every=args.every, wanted=args.iterations, chunk=args.chunk)
        objective = backend_for_trajectory(traj).objective_for_trajectory(
            traj, fraction=args.eval_fraction, subset_seed=args.eval_seed, batch_size=args.batch_size,
            device=args.device, dtype=args.dtype, hvp_memory_mb=args.hvp_memory_mb, hvp_mode=args.hvp_mode,
            data_comm=layout.data)
        m = lanczos_steps(args.m, traj.dim)
        blocks = parameter_blocks(objective.layout, args.blocks)  # a bad pattern fails here, before any work
        group_size = resolve_group_size(args.group_size, args.k, objective.device_type, layout.n_groups)
        attrs = {"dim": traj.dim, "k": args.k, "m": m, "seed": args.seed, "vector_kind": args.vector,
                 "sigma_rule": stored_sigma_rule(args.sigma),
                 "group_size": group_size, "config": {**config, "run": traj.config},
                 "provenance": provenance(config, ranks=comm.size, **layout.record()), runs.ATTRIBUTE: [traj.run],
                 "skipped": []}
        if blocks:
            attrs["blocks"] = {name: list(params) for name, params in blocks.items()}
        done = Spectra({}, attrs)
        if comm.rank == 0 and partial.exists():
            with unless_unreadable(partial, "partial spectra file"):  # a torn one: start over, with a warning
                previous = load_spectra(partial)
                if runs.differ(previous.runs, done.runs):
                    print(f"{partial} belongs to {runs.describe(previous.runs)}, not to the trajectory's "
                          f"{runs.describe(done.runs)}: starting over", file=sys.stderr)
                elif previous.attrs.get("config") == attrs["config"]:
                    done = Spectra(previous.entries, attrs)
                    print(f"resuming: {len(done.entries)} of {len(rows)} checkpoint(s) restored from {partial}",
                          file=sys.stderr)
        finished = comm.bcast(set(done.entries))
        progress = not args.no_progress and comm.rank == 0
        from tqdm.auto import tqdm

        for row in tqdm(rows, desc="spectra", unit="ckpt", disable=not progress):
            iteration = int(traj.iterations[row])
            if iteration in finished:
                continue
            reason = checkpoint_problem(traj, int(row))  # the same on every rank: they skip together
            if reason is None:
                if traj.buffer_layout:
                    objective.set_buffers(traj.buffers(int(row)), traj.buffer_layout)
                theta = objective.from_numpy(traj.params(int(row)))
                reason = loss_problem(objective.evaluate(theta).loss)  # one forward pass, identical on every rank
            if reason is None:
                if "hvp" not in attrs["provenance"]:  # the first point computed: resolve hvp_mode "auto" there
                    attrs["provenance"]["hvp"] = settle_hvp_mode(comm, objective, theta, group_size,
                                                                 everyone=layout.ranks_per_group > 1)
                try:
                    entry = point_spectrum(comm, objective, theta, iteration, k=args.k, m=m, seed=args.seed,
                                           kind=args.vector, sigma=args.sigma, group_size=group_size,
                                           ranks_per_group=layout.ranks_per_group)
                    entry = with_blocks(entry, comm, objective, theta, blocks, k=args.k, m=args.m, seed=args.seed,
                                        kind=args.vector, sigma=args.sigma, group_size=group_size,
                                        ranks_per_group=layout.ranks_per_group)
                except UnusableCheckpoint as error:  # rank 0 only, after the point's last collective
                    reason = error.reason
            if comm.rank != 0:
                continue
            if reason is not None:
                skip_checkpoint(attrs["skipped"], args.trajectory, iteration, reason)
                if args.plot_dir:
                    write_skipped_plot(iteration, reason, Path(args.plot_dir))
                continue
            done.entries[iteration] = entry
            save_spectra(done, partial)
            if args.plot_dir:
                write_plot(done.entries[iteration], Path(args.plot_dir), args.log_scale, attrs["sigma_rule"])
        if comm.rank == 0:
            save_spectra(done, out)
            partial.unlink(missing_ok=True)
            skipped = f", {len(attrs['skipped'])} skipped (non-finite)" if attrs["skipped"] else ""
            print(f"wrote spectra of {len(done.entries)} checkpoint(s){skipped} (k={args.k}, m={m}) to {out}",
                  file=sys.stderr)
    comm.barrier()
    return done if comm.rank == 0 else None


def warn_uneven_groups(layout: ParallelLayout) -> None:
    """Say on rank 0 when ``--ranks-per-group`` does not divide the ranks (the last, smaller group is the slowest)."""
    size, d = layout.world.size, layout.ranks_per_group
    if size % d and layout.world.rank == 0:
        print(f"warning: --ranks-per-group {d} does not divide the {size} MPI ranks: the last group has {size % d} "
              "rank(s) and the same share of starting vectors, so it finishes last", file=sys.stderr)


def resolve_group_size(value: int | str, k: int, device_type: str, ranks: int) -> int:
    """``--group-size``: a number as given (at most k), or for ``auto`` 1 on a CPU (a block product costs a CPU
    as much as its vectors one by one, and the one-chain loop reorthogonalizes less) and elsewhere the k vectors
    split evenly over the ``ranks`` iteration-parallel rank groups, one lockstep group each."""
    if value != "auto":
        return min(int(value), k)
    return 1 if device_type == "cpu" else -(-k // ranks)


def settle_hvp_mode(comm: SerialComm | MPIComm, objective: Objective, theta: Array, block: int, *,
                    everyone: bool = False) -> dict:
    """Resolve the objective's ``hvp_mode="auto"`` at ``theta`` for blocks of ``block`` vectors (rank 0 times it,
    every rank takes its choice, so the ranks' products agree); returns the record for the output's provenance.
    ``everyone``: every rank times it too (data parallel: a timed product is a collective of its group)."""
    record = objective.calibrate_hvp(theta, block) if comm.rank == 0 or everyone else None
    record = comm.bcast(record)
    objective.hvp_mode = record["mode"]
    return {**record, "block": block}


def block_item(text: str) -> str:
    """One item of ``--blocks`` (non-empty)."""
    if not text:
        raise argparse.ArgumentTypeError("a block must be whole, per_layer or a non-empty parameter-name pattern")
    return text


def with_blocks(entry: CheckpointSpectrum | None, comm: SerialComm | MPIComm, objective: Objective, theta: Array,
                blocks: dict[str, tuple[str, ...]], *, m: int, seed: int, kind: str, **slq: Any
                ) -> CheckpointSpectrum | None:
    """``entry`` (rank 0; None elsewhere) with the spectrum of each block's ``H[S, S]`` (:func:`point_spectrum` with
    its ``params``, every rank taking part as for the whole model) and the top Ritz value of m Lanczos steps from
    starting vector 0 with its true residual ``||H_SS u - lambda u||`` added to the block's summary."""
    from dataclasses import replace

    from .core.lanczos import ritz_pairs
    from .core.slq import starting_vector

    spectra = {}
    for name, params in blocks.items():
        block = point_spectrum(comm, objective, theta, entry.iteration if entry else 0, m=m, seed=seed, kind=kind,
                               params=params, **slq)
        operator = objective.hvp_operator(theta, params=params)
        top = ritz_pairs(operator, starting_vector(operator.dim, seed, 0, kind, like=theta), m, 1)  # m capped there
        if block is not None:
            spectra[name] = replace(block, summary={**block.summary, "ritz_top": float(top.values[0]),
                                                    "ritz_top_residual": float(top.residuals[0])})
    return replace(entry, blocks=spectra) if entry is not None and spectra else entry


def point_spectrum(comm: SerialComm | MPIComm, objective: Objective, theta: Array, key: int, *, k: int, m: int,
                   seed: int, kind: str, sigma: float | None, group_size: int = 1,
                   ranks_per_group: int = 1, params: tuple[str, ...] | None = None) -> CheckpointSpectrum | None:
    """SLQ (Algorithm 2) of the Hessian at ``theta``, the chains of each group of ``group_size`` starting vectors
    in lockstep; under MPI the groups are split over the rank groups of ``ranks_per_group`` ranks (Algorithm 5;
    inside a rank group the objective is data parallel, Algorithm 4) and the raw quadratures gathered on rank 0.
    Rank 0 gets a CheckpointSpectrum stored under ``key``, the other ranks None; where the Hessian-vector products
    were not finite, rank 0 gets an :class:`~.checkpoints.UnusableCheckpoint` instead. ``params``: of the principal
    submatrix ``H[S, S]`` of those parameters (:meth:`~.core.objective.Objective.hvp_operator`) instead, its
    starting vectors the same streams in its dimension."""
    from .checkpoints import UnusableCheckpoint
    from .core.lanczos import lanczos_steps
    from .core.layout import parameter_indices
    from .core.parallel import distributed_values
    from .core.slq import SLQResult, resolve_sigma, slq, spectral_density, spectrum_summary
    from .storage.spectra import CheckpointSpectrum

    operator = (lambda: objective.hvp_operator(theta)) if params is None else \
        (lambda: objective.hvp_operator(theta, params=params))
    dim = objective.dim if params is None else len(parameter_indices(objective.layout, params))
    m = lanczos_steps(m, dim)

    def quadrature(indices: np.ndarray) -> np.ndarray:
        part = slq(operator(), dim, k, m, seed=seed, kind=kind, like=theta, indices=indices, group_size=group_size)
        return np.concatenate([part.nodes, part.weights, part.alpha1[:, None]], axis=1)

    start = time.perf_counter()
    rows = distributed_values(comm, k, 2 * m + 1, quadrature, group_size=group_size, ranks_per_group=ranks_per_group)
    seconds = time.perf_counter() - start
    if rows is None:
        return None
    if not np.isfinite(rows).all():
        reason = "non-finite Hessian-vector products"
        raise UnusableCheckpoint(f"point {key}: {reason}", key, reason)
    result = SLQResult(nodes=rows[:, :m], weights=rows[:, m:2 * m], alpha1=rows[:, 2 * m], dim=dim,
                       seed=seed, indices=np.arange(k), kind=kind)
    width, _ = resolve_sigma(result.nodes, sigma)  # the stored density shows this point alone
    grid, density = spectral_density(result, sigma=width)
    return CheckpointSpectrum(key, result.nodes, result.weights, result.alpha1, grid, density,
                              {**spectrum_summary(result, NEGATIVE_TOL), "negative_tol": NEGATIVE_TOL}, seconds,
                              sigma=width)


def stored_sigma_rule(sigma: float | None) -> str:
    """How the stored densities of a spectra file got their width (the file's ``sigma_rule``; each checkpoint's
    value is its ``sigma`` attribute): each stored density shows one point, so the automatic rule is over that
    point's nodes; frames and plot_spectra smooth the raw nodes again over all the points they show together."""
    from .core.slq import SIGMA_REL

    if sigma is not None:
        return f"explicit --sigma {sigma!r}"
    return f"range/{round(1 / SIGMA_REL)} of each point's own nodes"


def write_skipped_plot(iteration: int, reason: str, folder: Path) -> None:
    """The density figure of a skipped checkpoint: a blank panel saying why, so the sequence shows the gap."""
    from .render.figures import save_figure
    from .render.spectrum_plots import plot_skipped

    save_figure(plot_skipped(f"iteration {iteration}", reason), folder / f"iter_{iteration:06d}.png", dpi=100)


def write_plot(entry: CheckpointSpectrum, folder: Path, log_scale: bool, sigma_rule: str) -> None:
    """One density figure per checkpoint (its stored density), named by iteration."""
    from .render.figures import save_figure
    from .render.spectrum_plots import density_title, draw_blocks, plot_density, sigma_record

    fig = plot_density(entry.grid, entry.density, log_scale=log_scale, title=density_title(entry),
                       sigma=entry.sigma)
    draw_blocks(fig, entry, entry.grid, entry.sigma, log_scale=log_scale)
    save_figure(fig, folder / f"iter_{entry.iteration:06d}.png", dpi=100,
                metadata=sigma_record(entry.sigma, sigma_rule))


if __name__ == "__main__":
    sys.exit(cli.run(main))
