"""Step: convert a landscape to Li et al.'s surface file, which their plotting scripts and ``h52vtp.py`` read.

    python -m gradvis_steps.li_surface results/run/landscape/<id>/landscape_2d.h5 surface.h5

Writes ``xcoordinates``, ``ycoordinates``, ``train_loss`` and ``train_acc`` (``--split test``: ``test_loss``,
``test_acc``) in their ``[y, x]`` layout, accuracy in percent, unevaluated points -1, as their ``plot_surface.py``
does. The other way needs no conversion: every gradvis step that reads a landscape (``plot_landscape``, ``frames``)
also reads their surface files.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cli, step_settings


@dataclass(frozen=True, kw_only=True)
class LiSurfaceSettings:
    """Settings of the li_surface step: the landscape, the surface file to write, the names of its arrays."""

    landscape: str
    out: str
    split: str = "train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.li_surface", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("landscape", help="landscape file (.h5) from the landscape step, 1D or 2D")
    parser.add_argument("out", type=cli.output_file, help="Li et al. surface file to write (.h5)")
    parser.add_argument("--split", choices=("train", "test"),
                        help="names of the arrays: <split>_loss, <split>_acc (the landscape's evaluation set is a "
                             "subset of the training set)")
    return step_settings.use_defaults(parser, LiSurfaceSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), LiSurfaceSettings, argv))
    return 0


def run(settings: LiSurfaceSettings) -> Path:
    """Write the landscape ``settings.landscape`` as Li et al.'s surface file ``settings.out``; returns its path."""
    args = settings
    if args.split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {args.split!r}")
    cli.check_outputs(files=(args.out,))
    from .storage.landscape import load_landscape
    from .storage.li_files import write_li_surface

    result = load_landscape(args.landscape)
    write_li_surface(result, args.out, split=args.split)
    shape = " x ".join(str(axis.size) for axis in result.axes)
    print(f"wrote the {shape} {args.split} surface of {args.landscape} to {args.out} (Li et al.'s [y, x] layout)",
          file=sys.stderr)
    return Path(args.out)


if __name__ == "__main__":
    sys.exit(cli.run(main))
