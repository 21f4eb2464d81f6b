"""Step: video frames: landscape + trajectory beside the eigenvalue density, one per checkpoint (or one
per point of an interpolation line).

    python -m gradvis_steps.frames training --landscape L.h5 --spectra S.h5 --out-dir frames/
    python -m gradvis_steps.frames interpolation --line line.h5 --spectra S.h5 --out-dir frames/
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from . import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.frames", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("kind", choices=("training", "interpolation"))
    parser.add_argument("--landscape", help="2D landscape (.h5) with the trajectory (kind training)")
    parser.add_argument("--line", help="1D interpolation line (.h5) (kind interpolation)")
    parser.add_argument("--spectra", required=True, help="spectra file (.h5) of the same checkpoints / points")
    parser.add_argument("--out-dir", required=True, help="folder for frame_000000.png, ...")
    parser.add_argument("--log-scale", action=argparse.BooleanOptionalAction, default=True,
                        help="log-scale density axis")
    parser.add_argument("--log-levels", action="store_true", help="log-spaced contour levels")
    parser.add_argument("--dpi", type=cli.positive_int, default=80)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .render.frames import interpolation_frames, training_frames, write_frames
    from .storage.landscape import load_landscape
    from .storage.spectra import load_spectra

    spectra = load_spectra(args.spectra)
    if not spectra.entries:
        raise ValueError(f"{args.spectra} holds no spectra")
    if args.kind == "training":
        if not args.landscape:
            raise ValueError("kind training needs --landscape FILE")
        frames = training_frames(load_landscape(args.landscape), spectra, log_scale=args.log_scale,
                                 log_levels=args.log_levels)
    else:
        if not args.line:
            raise ValueError("kind interpolation needs --line FILE")
        frames = interpolation_frames(load_landscape(args.line), spectra, log_scale=args.log_scale)
    out = Path(args.out_dir)
    staging = out.with_name(f".{out.name}.partial")  # the folder appears whole or not at all
    shutil.rmtree(staging, ignore_errors=True)
    paths = write_frames(frames, staging, dpi=args.dpi)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"wrote {len(paths)} frames to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
