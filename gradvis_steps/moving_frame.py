"""Step: a "moving frame" for the training video: at every k-th checkpoint, the 2D landscape centred there
along two of that checkpoint's own top Hessian eigenvectors.

    python -m gradvis_steps.moving_frame --trajectory results/run/trajectory.h5 --every 5 \\
        --out-dir results/run/moving_frame --which largest --count 2 --steps 40 --pick 0 1 \\
        --resolution 25 --border 0.4

The centres are the checkpoints the spectrum step takes with the same ``--every``: rows 0, k, 2k, ... of
the trajectory and the last one. For each centre this runs, in this process, the eigendirections step
(``--iteration`` the centre), the directions step (``--method hessian --pick i j --center-iteration``
the centre) and the landscape step (their ``run`` with settings), and writes::

    OUT/centre_<iteration:06d>.h5              the landscape centred at that checkpoint (the video's frames)
    OUT/directions/centre_<iteration:06d>.h5   the two eigenvectors spanning it, with their eigenvalues
    OUT/.moving_frame.json                     the settings and the run, which a later run checks before reusing
                                               files
    OUT/skipped.json                           the centres left out as not finite ({iteration, reason}; the run
                                               diverged there): their iterations are drawn on the previous plane

An eigenvector's sign is arbitrary, so each plane's axes are flipped where needed to point the way of the
previous centre's (non-negative dot products; an eigenvector stays one), and consecutive frames do not
mirror each other.

The folder is built as the hidden sibling ``.OUT.partial`` and renamed to OUT at the end, so it appears
whole. A killed run resumes there: finished centres are skipped (and a landscape resumes its own grid
points); a run on an OUT that is complete but lacks some files (removed by hand) recomputes only those.
Files made with other settings or for another run (``storage.runs``: every landscape and directions file records its
run) are never reused. Serial: not for ``mpiexec``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cli, step_settings
from .defaults import schema_default
from .eigendirections import add_eigen_arguments

FORMAT = "gradvis-moving-frame"
MANIFEST = ".moving_frame.json"
WORK = ".work"  # the eigendirections files, inside the staging folder only


@dataclass(frozen=True, kw_only=True)
class MovingFrameSettings(step_settings.HessianSettings):
    """Settings of the moving_frame step: the centres, the eigenvectors at each, the landscape grid, the folder."""

    trajectory: str
    out_dir: str
    every: int = 1
    which: str = schema_default("directions.hessian.which")
    target: float = schema_default("directions.hessian.target")
    count: int = schema_default("directions.hessian.count")
    steps: int = schema_default("directions.hessian.steps")
    seed: int = 0
    pick: tuple[int, int] = tuple(schema_default("directions.hessian.pick"))
    resolution: int = schema_default("landscape.resolution")
    border: float = schema_default("landscape.border")
    range: tuple[float, float, float, float] | None = None
    min_extent: float = 1.0
    grid_batching: str = schema_default("landscape.grid_batching")


@dataclass(frozen=True)
class MovingFrame:
    """What a moving_frame run made: the folder, the centres' iterations, and those skipped as not finite."""

    out_dir: Path
    centres: list[int]
    skipped: list[dict[str, Any]] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.moving_frame", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trajectory", required=True, help="trajectory file (.h5) from the train step")
    parser.add_argument("--every", type=cli.positive_int,
                        help="every k-th checkpoint (the last one always), as the spectrum step's --every")
    parser.add_argument("--out-dir", required=True, type=cli.output_folder,
                        help="folder for centre_<iteration>.h5, ...")
    add_eigen_arguments(parser, per="per centre")
    parser.add_argument("--pick", type=int, nargs=2, metavar=("I", "J"),
                        help="the two eigenvectors (0-based, of --count) that span each plane")
    parser.add_argument("--resolution", type=cli.positive_int, help="grid points per axis")
    parser.add_argument("--border", type=float,
                        help="extend the projected trajectory's bounding box by this fraction of its extent per side")
    parser.add_argument("--range", type=float, nargs=4, metavar=("XMIN", "XMAX", "YMIN", "YMAX"),
                        help="one explicit plane extent for every centre instead (frames of one scale)")
    parser.add_argument("--min-extent", type=float,
                        help="smallest extent of an axis when the trajectory barely moves along it")
    parser.add_argument("--grid-batching", choices=("auto", "vmap", "per_point"),
                        help="as the landscape step's --grid-batching")
    cli.add_evaluation_arguments(parser, hessian=True)
    return step_settings.use_defaults(parser, MovingFrameSettings)


def check_arguments(args: MovingFrameSettings) -> None:
    """Reject bad settings before any work, naming the value and what is accepted."""
    step_settings.check_positive(args, "every", "count", "steps", "resolution", "batch_size")
    if len(args.pick) != 2:
        raise ValueError(f"--pick needs two eigenvectors, got {list(args.pick)}")
    if args.range is not None and len(args.range) != 4:
        raise ValueError(f"--range needs 4 numbers (XMIN XMAX YMIN YMAX), got {list(args.range)}")
    if args.count > args.steps:
        raise ValueError(f"--count {args.count} exceeds --steps {args.steps}: Lanczos gives at most one Ritz pair "
                         "per step")
    i, j = args.pick
    if i == j:
        raise ValueError(f"--pick needs two different eigenvectors, got {i} {j}")
    bad = [p for p in args.pick if not 0 <= p < args.count]
    if bad:
        raise ValueError(f"--pick {i} {j}: {bad} out of range; with --count {args.count} the eigenvectors are "
                         f"0..{args.count - 1}")
    if not 0 <= args.border <= 10:
        raise ValueError(f"--border must be in [0, 10], got {args.border}")


def centres(iterations: Any, every: int) -> list[int]:
    """Iterations of the centres: the checkpoints the spectrum step takes with the same ``--every``."""
    from .checkpoints import select_rows

    return [int(iterations[row]) for row in select_rows(iterations, every=every)]


def manifest(args: MovingFrameSettings, trajectory: Any, iterations: list[int]) -> dict[str, Any]:
    """What the folder's files depend on (the settings and the run), as JSON would read it back. The run is named by
    its config, identity (``storage.runs``) and checkpoints, not by its path, so a moved results folder still
    resumes and two copies of one run write the same bytes."""
    from .storage import runs

    settings = step_settings.config_of(args, "out_dir", "no_progress", "trajectory")
    record = {"format": FORMAT, "settings": settings, "run": trajectory.config, runs.ATTRIBUTE: [trajectory.run],
              "trajectory_iterations": [int(i) for i in trajectory.iterations], "centres": iterations}
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None if missing or unreadable."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def same_manifest(found: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """``found`` (a folder's manifest) says what ``wanted`` says; one written before runs were recorded matches
    when everything else does (the same config and checkpoints)."""
    from .storage import runs

    if found is None or runs.ATTRIBUTE in found:
        return found == wanted
    return found == {key: value for key, value in wanted.items() if key != runs.ATTRIBUTE}


def prepare_staging(out: Path, staging: Path, wanted: dict[str, Any]) -> None:
    """Reuse a staging folder (or a finished OUT) made with the same settings for the same run; start afresh
    otherwise."""
    from .storage.atomic import write_json

    if staging.exists() and not same_manifest(read_manifest(staging), wanted):
        print(f"{staging} was made with other settings or for another run: starting over", file=sys.stderr)
        shutil.rmtree(staging)
    if not staging.exists() and out.is_dir() and same_manifest(read_manifest(out), wanted):
        out.rename(staging)  # complete it: only the centres whose files are missing are computed
    staging.mkdir(parents=True, exist_ok=True)
    write_json(staging / MANIFEST, wanted)


def align_signs(plane: Path, previous: Path) -> list[bool]:
    """Flip the directions in ``plane`` whose dot product with the same row of ``previous`` is negative, so
    the axes of consecutive planes point alike; returns which were flipped (recorded in the file's config)."""
    import dataclasses

    import numpy as np

    from .storage.directions import load_directions_file, save_directions

    current, before = load_directions_file(plane), load_directions_file(previous)
    dots = np.einsum("ij,ij->i", current.vectors.astype(np.float64), before.vectors.astype(np.float64))
    flipped = [bool(d < 0) for d in dots]
    if any(flipped):
        signs = np.where(dots < 0, -1.0, 1.0).astype(current.vectors.dtype)[:, None]
        config = {**current.config, "signs_aligned_to": before.center_iteration, "flipped": flipped}
        save_directions(dataclasses.replace(current, vectors=current.vectors * signs, config=config), plane)
    return flipped


def centre_name(iteration: int) -> str:
    """File name of one centre's landscape (and of its directions, in ``directions/``)."""
    return f"centre_{iteration:06d}.h5"


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), MovingFrameSettings, argv))
    return 0


def run(settings: MovingFrameSettings) -> MovingFrame:
    """The landscapes of the moving frame of ``settings.trajectory`` in ``settings.out_dir`` (see the module)."""
    args = settings
    check_arguments(args)
    cli.check_outputs(folders=(args.out_dir,))
    from .checkpoints import UnusableCheckpoint, skip_checkpoint
    from .core.parallel import world
    from .storage.atomic import write_json
    from .storage.trajectory import Trajectory

    if world().size > 1:
        raise ValueError("moving_frame runs serially: start it without mpiexec/srun")
    with Trajectory(args.trajectory) as traj:
        iterations = centres(traj.iterations, args.every)
        wanted = manifest(args, traj, iterations)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out} exists and is not a folder")
    staging = out.with_name(f".{out.name}.partial")
    prepare_staging(out, staging, wanted)
    work = staging / WORK

    computed = 0
    skipped: list[dict[str, Any]] = []
    previous: Path | None = None  # the previous centre's directions file
    for number, iteration in enumerate(iterations, 1):
        target = staging / centre_name(iteration)
        plane = staging / "directions" / centre_name(iteration)
        if target.is_file() and plane.is_file():
            print(f"centre {number}/{len(iterations)} (iteration {iteration}): done already", file=sys.stderr)
            previous = plane
            continue
        print(f"centre {number}/{len(iterations)} (iteration {iteration})", file=sys.stderr)
        try:
            _centre(args, staging, work, iteration, previous)
        except UnusableCheckpoint as error:  # not finite there: the iterations it would draw take the previous plane
            skip_checkpoint(skipped, args.trajectory, iteration, error.reason, what="centre at iteration")
            continue
        computed += 1
        previous = plane
    write_json(staging / "skipped.json", skipped)
    if len(skipped) == len(iterations):
        raise ValueError(f"{args.trajectory}: every centre of the moving frame is not finite (the run diverged): "
                         "no landscape to draw; retrain with a lower train.lr")
    shutil.rmtree(work, ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(f"wrote {len(iterations) - len(skipped)} moving-frame landscapes ({computed} computed now"
          + (f", {len(skipped)} centres skipped as not finite" if skipped else "") + f") to {out}", file=sys.stderr)
    return MovingFrame(out, iterations, skipped)


def _centre(args: MovingFrameSettings, staging: Path, work: Path, iteration: int, previous: Path | None) -> None:
    """The eigendirections, the sign-aligned plane and the landscape of the centre at ``iteration``, each by its
    step's ``run`` with this step's evaluation settings."""
    import dataclasses

    from . import directions, eigendirections, landscape

    evaluation = {field.name: getattr(args, field.name)
                  for field in dataclasses.fields(step_settings.EvaluationSettings)}
    trajectory = os.fspath(args.trajectory)
    target = staging / centre_name(iteration)
    plane = staging / "directions" / centre_name(iteration)
    if not plane.is_file():
        target.unlink(missing_ok=True)  # a landscape belongs to its directions file: recompute both
        eig = work / f"eigendirections_{iteration:06d}.h5"
        if not eig.is_file():
            work.mkdir(exist_ok=True)
            eigendirections.run(eigendirections.EigendirectionsSettings(
                trajectory=trajectory, out=os.fspath(eig), iteration=iteration, which=args.which, target=args.target,
                count=args.count, steps=args.steps, seed=args.seed, hvp_memory_mb=args.hvp_memory_mb,
                hvp_mode=args.hvp_mode, **evaluation))
        unaligned = work / f"directions_{iteration:06d}.h5"
        directions.run(directions.DirectionsSettings(
            trajectory=trajectory, method="hessian", eigendirections=os.fspath(eig), pick=tuple(args.pick),
            center_iteration=iteration, out=os.fspath(unaligned)))
        if previous is not None and previous.is_file():
            align_signs(unaligned, previous)
        plane.parent.mkdir(exist_ok=True)
        os.replace(unaligned, plane)  # in place only once aligned: a resume never takes an unaligned plane
    landscape.run(landscape.LandscapeSettings(
        trajectory=trajectory, directions=os.fspath(plane), out=os.fspath(target), dims=2,
        resolution=args.resolution, border=args.border, min_extent=args.min_extent,
        range=tuple(args.range) if args.range else None, grid_batching=args.grid_batching, **evaluation))


if __name__ == "__main__":
    sys.exit(cli.run(main))
