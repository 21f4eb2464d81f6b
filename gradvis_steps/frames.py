"""Step: video frames in the paper's layouts, one per checkpoint (or one per point of an interpolation line).

    python -m gradvis_steps.frames training --landscape L.h5 [L2.h5 ...] --spectra S.h5 --out-dir frames/
    python -m gradvis_steps.frames interpolation --line line.h5 [--plane plane.h5] --spectra S.h5 --out-dir frames/

Training (Figure 1): 3D surface | contour, each with the trajectory so far and the current point | the eigenvalue
density. Several ``--landscape`` files centred at different checkpoints make a moving frame: iteration t is drawn
on the landscape whose centre is the largest <= t (the first one if none). Interpolation (Figure 8): [the plane
through both minima and A's initial point with the current point | ] the loss along the line | the density. All
densities of a sequence share one grid and one Gaussian width (``--sigma``, else range/500 over all the points);
the folder (``frame_000000.png``, ..., ``frames.json`` recording sigma and its rule, and the run(s) shown) appears
whole. The inputs must belong to the same run(s) (``storage.runs``): the same training run, or the same pair of
runs for an interpolation.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cli, step_settings
from .defaults import schema_default


@dataclass(frozen=True, kw_only=True)
class FramesSettings:
    """Settings of the frames step: which video (training or interpolation), its inputs, the look, the folder."""

    kind: str
    spectra: str
    out_dir: str
    landscape: tuple[str, ...] | None = None
    line: str | None = None
    plane: str | None = None
    sigma: float | None = schema_default("spectra.sigma")
    log_scale: bool = schema_default("frames.log_scale")
    log_levels: bool = False
    dpi: int = schema_default("frames.dpi")


def landscape_files(paths: list[str]) -> list[str]:
    """The landscape files named, a folder standing for its ``centre_*.h5`` (the moving_frame step's output)."""
    files = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(str(p) for p in Path(path).glob("centre_*.h5"))
            if not found:
                raise ValueError(f"--landscape {path} is a folder without centre_*.h5 landscapes (moving_frame's "
                                 "output is expected)")
            files += found
        else:
            files.append(path)
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.frames", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("kind", choices=("training", "interpolation"))
    parser.add_argument("--landscape", nargs="+", help="2D landscape(s) (.h5) with the trajectory (kind training); "
                        "several, centred at different checkpoints, for a moving frame (a folder: its centre_*.h5)")
    parser.add_argument("--line", help="1D interpolation line (.h5) (kind interpolation)")
    parser.add_argument("--plane", help="2D landscape of the interpolation plane (.h5) (kind interpolation, optional)")
    parser.add_argument("--spectra", required=True, help="spectra file (.h5) of the same checkpoints / points")
    parser.add_argument("--out-dir", required=True, type=cli.output_folder, help="folder for frame_000000.png, ...")
    cli.add_sigma_argument(parser)
    parser.add_argument("--log-scale", action=argparse.BooleanOptionalAction, help="log-scale density axis")
    parser.add_argument("--log-levels", action="store_true", help="log-spaced contour levels")
    parser.add_argument("--dpi", type=cli.positive_int)
    return step_settings.use_defaults(parser, FramesSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), FramesSettings, argv))
    return 0


def run(settings: FramesSettings) -> list[Path]:
    """The frames of one video in ``settings.out_dir``; returns their paths (in the folder once it is in place)."""
    args = settings
    if args.kind not in ("training", "interpolation"):
        raise ValueError(f"kind must be training or interpolation, got {args.kind!r}")
    step_settings.check_positive(args, "dpi")
    cli.check_outputs(folders=(args.out_dir,))
    cli.check_sigma(args.sigma)
    from .render.frames import InterpolationFrames, TrainingFrames, write_frames
    from .storage import runs
    from .storage.atomic import atomic_folder
    from .storage.landscape import load_landscape
    from .storage.spectra import load_spectra

    if args.kind == "training":
        if not args.landscape:
            raise ValueError("kind training needs --landscape FILE [FILE ...]")
        if args.line or args.plane:
            raise ValueError("--line and --plane belong to kind interpolation, not training")
        paths = landscape_files(args.landscape)
        landscapes = [load_landscape(path) for path in paths]
        inputs = [runs.Source("landscape file", path, result.runs)
                  for path, result in zip(paths, landscapes, strict=True)]
    else:
        if not args.line:
            raise ValueError("kind interpolation needs --line FILE")
        if args.landscape:
            raise ValueError("--landscape belongs to kind training; kind interpolation takes --plane FILE")
        line = load_landscape(args.line)
        plane = load_landscape(args.plane) if args.plane else None
        inputs = [runs.Source("interpolation line", args.line, line.runs),
                  *([runs.Source("interpolation plane", args.plane, plane.runs)] if plane is not None else [])]
    spectra = load_spectra(args.spectra)
    shown = runs.check_same_runs([*inputs, runs.Source("spectra file", args.spectra, spectra.runs)])
    if not spectra.entries:
        raise ValueError(f"{args.spectra} holds no spectra")
    if args.kind == "training":
        frames = TrainingFrames(landscapes, spectra, sigma=args.sigma, log_scale=args.log_scale,
                                log_levels=args.log_levels, dpi=args.dpi)
        extra: dict = {}
    else:
        frames = InterpolationFrames(line, spectra, plane=plane, sigma=args.sigma, log_scale=args.log_scale,
                                     log_levels=args.log_levels, dpi=args.dpi)
        extra = {"plane": args.plane is not None}
    if shown is not None:
        extra["runs"] = shown
    out = Path(args.out_dir)
    with atomic_folder(out) as staging:  # the folder appears whole or not at all
        # no input paths in the record: the same results rendered in another folder give the same bytes
        written = write_frames(frames, staging, extra=extra)
    print(f"wrote {len(written.paths)} frames to {out} (density sigma {frames.density.sigma:.3g}, "
          f"{frames.density.rule})", file=sys.stderr)
    return [out / Path(path).name for path in written.paths]


if __name__ == "__main__":
    sys.exit(cli.run(main))
