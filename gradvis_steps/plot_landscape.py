"""Step: figures of a landscape: 2D contour and 3D surface with the trajectory, 1D curve, VTK export.

    python -m gradvis_steps.plot_landscape --landscape results/run/landscape/pca.h5 \\
        --contour pca_contour.png --surface pca_surface.png --vtk pca_surface.vtk
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from . import cli, step_settings


@dataclass(frozen=True, kw_only=True)
class PlotLandscapeSettings:
    """Settings of the plot_landscape step: the landscape, the figures to write (any of them), their look."""

    landscape: str
    contour: str | None = None
    surface: str | None = None
    line: str | None = None
    vtk: str | None = None
    log_levels: bool = False
    mark: tuple[tuple[str, str, str], ...] = ()
    title: str | None = None
    dpi: int = 120


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.plot_landscape",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--landscape", required=True, help="landscape file (.h5) from the landscape step")
    parser.add_argument("--contour", type=cli.output_file, help="2D contour plot to write (.png/.pdf/.svg)")
    parser.add_argument("--surface", type=cli.output_file, help="3D surface plot to write")
    parser.add_argument("--line", type=cli.output_file, help="1D curve to write (1D landscapes)")
    parser.add_argument("--vtk", help="ParaView-readable VTK structured grid of the surface")
    parser.add_argument("--log-levels", action="store_true", help="log-spaced contour levels / log loss axis "
                        "(without it: the level rule, log-spaced for an interpolation plane, else linear)")
    parser.add_argument("--mark", nargs=3, action="append", metavar=("X", "Y", "LABEL"),
                        help="mark a point of the plane on the contour (repeatable), e.g. --mark 1 0 'minimum B'")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--dpi", type=cli.positive_int)
    return step_settings.use_defaults(parser, PlotLandscapeSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), PlotLandscapeSettings, argv))
    return 0


def run(settings: PlotLandscapeSettings) -> None:
    """Draw the landscape ``settings.landscape`` into the figures (and VTK file) that ``settings`` name."""
    args = settings
    step_settings.check_positive(args, "dpi")
    cli.check_outputs(files=(args.contour, args.surface, args.line))
    if not any((args.contour, args.surface, args.line, args.vtk)):
        raise ValueError("nothing to do: give at least one of --contour, --surface, --line, --vtk")
    from .render.figures import save_figure
    from .render.landscape_plots import plot_contour, plot_line, plot_surface
    from .storage.landscape import export_vtk, load_landscape

    result = load_landscape(args.landscape)
    wanted_2d = [flag for flag, value in (("--contour", args.contour), ("--surface", args.surface),
                                          ("--vtk", args.vtk)) if value]
    if result.ndim != 2 and wanted_2d:
        raise ValueError(f"{args.landscape} is a {result.ndim}D landscape; {', '.join(wanted_2d)} need a 2D one")
    if result.ndim != 1 and args.line:
        raise ValueError(f"{args.landscape} is a {result.ndim}D landscape; --line needs a 1D one")
    try:
        marks = [(float(x), float(y), label) for x, y, label in args.mark]
    except ValueError as error:
        raise ValueError(f"--mark needs X Y LABEL with numbers X and Y, got {[list(m) for m in args.mark]}") \
            from error
    if args.contour:
        save_figure(plot_contour(result, log_levels=args.log_levels or None, title=args.title, marks=marks),
                    args.contour, dpi=args.dpi)
    if args.surface:
        save_figure(plot_surface(result, log_z=args.log_levels or None, title=args.title), args.surface,
                    dpi=args.dpi)
    if args.line:
        save_figure(plot_line(result, log_scale=args.log_levels, title=args.title), args.line, dpi=args.dpi)
    if args.vtk:
        export_vtk(result, args.vtk)


if __name__ == "__main__":
    sys.exit(cli.run(main))
