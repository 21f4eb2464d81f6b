"""Step: the two (or more) directions that span a landscape: random, PCA, Hessian eigenvectors, custom.

    python -m gradvis_steps.directions --trajectory results/run/trajectory.h5 --method pca \\
        --out results/run/directions/pca.h5

Normalization (paper eq. 2, Li et al.'s filter-wise normalization) defaults by method (``auto``):
random and custom directions are filter-normalized to the centre point's weights, with biases and
batch-norm parameters set to zero; PCA components and Hessian eigenvectors are kept as they are, so an
eigenvector stays an eigenvector and a principal axis stays a principal axis (pass ``--normalization
filter`` to normalize them anyway). The stored vectors are exactly the ones the landscape spans and the
trajectory is projected on.

The file records the run its vectors belong to (``storage.runs``; the pair A, B for ``--method interpolation``);
eigendirections (``--method hessian``) and a custom gradvis HDF5 file that records a run must belong to the
trajectory's run.

Divergence, judged from the trajectory file (non-finite parameters or buffers, or a non-finite batch loss
recorded in training): a centre (or, for interpolation, an end point) that is not finite ends the step with one
line naming it; the PCA leaves such checkpoints out with a warning and lists them in the file's ``skipped``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import cli, step_settings
from .core.normalization import DEFAULT_IGNORE, is_normalized, normalize_directions
from .core.normalization import METHODS as NORMALIZATIONS
from .defaults import schema_default

METHODS = ("random", "pca", "hessian", "custom", "interpolation")
DEFAULT_NORMALIZATION = {"random": "filter", "custom": "filter", "pca": "none", "hessian": "none",
                         "interpolation": "none"}
KINDS = ("bias", "batchnorm", "norm", "conv", "linear", "other")

if TYPE_CHECKING:
    from .storage.directions import Directions


@dataclass(frozen=True, kw_only=True)
class DirectionsSettings:
    """Settings of the directions step: the trajectory, the method and its inputs, normalization, where to write."""

    trajectory: str
    method: str
    out: str
    count: int = 2
    center_iteration: int | None = None
    seed: int = schema_default("directions.seed")
    eigendirections: str | None = None
    pick: tuple[int, ...] | None = None
    pca_memory_mb: int = 1024
    custom: str | None = schema_default("directions.custom_file")
    custom_key: tuple[str, ...] | None = schema_default("directions.custom_key")
    trajectory_b: str | None = None
    normalization: str = schema_default("directions.normalization")
    ignore: tuple[str, ...] = DEFAULT_IGNORE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.directions", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trajectory", required=True, help="trajectory file (.h5) from the train step")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--out", required=True, type=cli.output_file, help="directions file to write (.h5)")
    parser.add_argument("--count", type=cli.positive_int, help="number of directions")
    parser.add_argument("--center-iteration", type=int,
                        help="checkpoint the landscape is centred on (default: the last one)")
    parser.add_argument("--seed", type=int, help="seed of random directions")
    parser.add_argument("--eigendirections", help="eigendirections file (method hessian)")
    parser.add_argument("--pick", type=int, nargs="+",
                        help="which eigenvectors of the eigendirections file to use (default: the first --count)")
    parser.add_argument("--pca-memory-mb", type=cli.positive_int,
                        help="memory for checkpoints held at once by the streamed PCA (default 1024): the more, the "
                             "fewer passes over the trajectory; at least 3 model-sized vectors are always held")
    parser.add_argument("--custom", help="file with the directions (method custom): .npy, .npz or .h5, (k, N); a Li et "
                        "al. direction file (groups xdirection, ydirection of per-tensor datasets) gives the plane")
    parser.add_argument("--custom-key", nargs="+", metavar="KEY",
                        help="the array(s) or group(s) of a .npz/.h5 --custom file to use, in this order (default: its "
                             "only entry, or xdirection and ydirection of a Li et al. file)")
    parser.add_argument("--trajectory-b", help="second run (method interpolation): the plane through both final "
                        "points and the first run's initial point, centred on the first run's final point")
    parser.add_argument("--normalization", choices=("auto", *NORMALIZATIONS),
                        help="auto: filter for random/custom, none for pca/hessian")
    parser.add_argument("--ignore", nargs="*", choices=KINDS,
                        help="parameter kinds set to zero by normalization (paper: all batch-norm parameters)")
    return step_settings.use_defaults(parser, DirectionsSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), DirectionsSettings, argv))
    return 0


def run(settings: DirectionsSettings) -> Directions:
    """The directions of ``settings.method`` for ``settings.trajectory``, written to ``settings.out``; returns them."""
    args = settings
    if args.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {args.method!r}")
    if args.normalization not in ("auto", *NORMALIZATIONS):
        raise ValueError(f"normalization must be one of auto, {', '.join(NORMALIZATIONS)}, got {args.normalization!r}")
    step_settings.check_positive(args, "count", "pca_memory_mb")
    cli.check_outputs(files=(args.out,))
    from .checkpoints import checkpoint_problem, skip_checkpoint, usable_or_error
    from .core.directions import random_directions
    from .core.pca import trajectory_pca
    from .provenance import provenance
    from .storage import runs
    from .storage.directions import Directions, load_directions, load_directions_file, save_directions
    from .storage.trajectory import Trajectory

    with Trajectory(args.trajectory) as traj:
        this_run = runs.Source.of_trajectory(traj, args.trajectory)
        belongs_to = [traj.run]
        center_index = -1 if args.center_iteration is None else traj.index_of_iteration(args.center_iteration)
        usable_or_error(traj, center_index, "centre of the directions", "centre them on an earlier checkpoint "
                        "(--center-iteration) or retrain with a lower train.lr")
        center = traj.params(center_index)
        center_iteration = int(traj.iterations[center_index])
        normalization = DEFAULT_NORMALIZATION[args.method] if args.normalization == "auto" else args.normalization
        extra: dict = {}
        as_given = False  # custom directions already normalized at the centre: stored unchanged
        skipped: list[dict] = []
        if args.method == "random":
            vectors = random_directions(traj.dim, args.seed, count=args.count)
            labels = [f"random direction {i + 1}" for i in range(args.count)]
        elif args.method == "pca":
            rows = []  # the finite checkpoints: the PCA's samples
            for row in range(len(traj)):
                reason = checkpoint_problem(traj, row)
                if reason is None:
                    rows.append(row)
                else:
                    skip_checkpoint(skipped, args.trajectory, int(traj.iterations[row]), reason)
            if len(rows) < 3:
                raise ValueError(f"PCA directions need at least 3 checkpoints, {traj.path} has {len(rows)}"
                                 + (f" finite ones ({len(skipped)} skipped: the run diverged)" if skipped else ""))
            vector_bytes = traj.dim * traj.file["params"].dtype.itemsize
            block = max(1, args.pca_memory_mb * 2**20 // vector_bytes - 2)  # + reference + the row being read
            pca = trajectory_pca(lambda i: traj.params(rows[i]), len(rows), n_components=min(args.count, len(rows) - 1),
                                 reference_index=rows.index(center_index % len(traj)),
                                 block_size=min(block, len(rows)))
            if len(pca.components) < args.count:
                raise ValueError(
                    f"the trajectory in {traj.path} spans only {len(pca.components)} PCA direction(s) with "
                    f"non-zero variance; --count {args.count} asks for more"
                )
            vectors = pca.components
            ratios = pca.explained_variance_ratio
            labels = [f"PCA {i + 1} ({100 * r:.1f}% var)" for i, r in enumerate(ratios)]
            extra = {"explained_variance": pca.explained_variance, "explained_variance_ratio": ratios}
        elif args.method == "hessian":
            if not args.eigendirections:
                raise ValueError("method hessian needs --eigendirections FILE (from gradvis_steps.eigendirections)")
            eig = load_directions_file(args.eigendirections)
            runs.check_trajectory(this_run, runs.Source("eigendirections file", args.eigendirections, eig.runs))
            eig = eig.select(list(args.pick) if args.pick is not None else list(range(args.count)))
            if eig.vectors.shape[1] != traj.dim:
                raise ValueError(f"{args.eigendirections} has vectors of length {eig.vectors.shape[1]}, "
                                 f"the trajectory's parameters have {traj.dim}")
            if eig.center_iteration is not None and eig.center_iteration != center_iteration:
                # Eigenvectors describe the curvature at one point: a plane centred elsewhere would be mislabelled.
                raise ValueError(f"{args.eigendirections} holds eigenvectors of the Hessian at iteration "
                                 f"{eig.center_iteration}, but the plane is centred at iteration {center_iteration}; "
                                 f"pass --center-iteration {eig.center_iteration} or recompute the eigendirections")
            vectors = eig.vectors
            labels = list(eig.labels)
            extra = {"eigenvalues": eig.eigenvalues, "residuals": eig.residuals}
        elif args.method == "interpolation":
            if not args.trajectory_b:
                raise ValueError("method interpolation needs --trajectory-b FILE (the second run)")
            with Trajectory(args.trajectory_b) as other:
                if other.layout != traj.layout:
                    raise ValueError(f"{args.trajectory_b} holds a different model than {args.trajectory}")
                usable_or_error(other, -1, "final point of run B", "retrain run B with a lower train.lr or "
                                "train.on_divergence: keep")
                theta_b = other.params(-1)
                belongs_to = [traj.run, other.run]
            usable_or_error(traj, 0, "initial point of run A", "check the model's initialization")
            # Paper section 3.4: the plane through both minima and a third point (here the first run's init):
            # theta_A + x (theta_B - theta_A) + y (theta_A_init - theta_A); B sits at (1, 0), the init at (0, 1).
            vectors = np.stack([theta_b.astype(np.float64) - center, traj.params(0).astype(np.float64) - center])
            labels = ["minimum A → minimum B", "minimum A → initial point of A"]
        else:
            if not args.custom:
                raise ValueError("method custom needs --custom FILE with the directions")
            custom = runs.Source("custom directions file", args.custom, runs.in_hdf5(args.custom))
            runs.check_trajectory(this_run, custom, warn=False, hint="; to use them anyway, save the vectors as .npy")
            vectors = load_directions(args.custom, traj.dim, key=args.custom_key, layout=traj.layout)
            labels = [f"custom direction {i + 1}" for i in range(len(vectors))]
            if args.normalization == "auto" and all(is_normalized(v, center, traj.layout, ignore=args.ignore)
                                                    for v in vectors):
                # saved filter-normalized at this centre (e.g. by Li et al.'s net_plotter): keep the file's values
                # instead of rescaling them by rounding-sized factors (about 1e-7)
                as_given = True
                labels = [f"{label}, filter-normalized (as given)" for label in labels]
        if normalization != "none" and not as_given:
            vectors = normalize_directions(np.asarray(vectors), center, traj.layout, method=normalization,
                                           ignore=args.ignore)
            labels = [f"{label}, {normalization}-normalized" for label in labels]
        config = step_settings.config_of(args, "out")
        result = Directions(np.asarray(vectors, dtype=np.float32), "eigenvector" if args.method == "hessian"
                            else args.method, tuple(labels), normalization, center_iteration,
                            config=config, provenance=provenance({**config, "run": traj.config}), runs=belongs_to,
                            skipped=skipped,
                            **extra)
    save_directions(result, args.out)
    print(f"wrote {len(result)} {args.method} directions ({normalization} normalization) to {args.out}",
          file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(cli.run(main))
