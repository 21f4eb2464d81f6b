"""Step: one eigenvalue density plot per checkpoint of a spectra file, all on one grid, width and scale.

    python -m gradvis_steps.plot_spectra --spectra results/run/spectra.h5 --out-dir results/run/densities

Writes ``density_<iteration:06d>.png`` for every checkpoint (point index for an interpolation line's spectra).
The densities are smoothed again from the stored raw nodes with one Gaussian width for all of them (``--sigma``,
else range/500 over all the checkpoints: the same width the frames of that file use) and drawn with common axis
limits, so the plots compare side by side; the width and its rule are in each PNG's text. Where the spectrum step
analysed Hessian blocks (``--blocks``), each block's density is a further curve, its top eigenvalue and trace in
the legend. A checkpoint the spectrum step skipped (non-finite: the run diverged there) gets a blank plot saying so.
The folder appears whole (filled as a hidden sibling, then renamed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cli, step_settings
from .defaults import schema_default


@dataclass(frozen=True, kw_only=True)
class PlotSpectraSettings:
    """Settings of the plot_spectra step: the spectra file, the density width and axes, the folder of figures."""

    spectra: str
    out_dir: str
    sigma: float | None = schema_default("spectra.sigma")
    log_scale: bool = schema_default("frames.log_scale")
    dpi: int = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.plot_spectra", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--spectra", required=True, help="spectra file (.h5) from the spectrum or interpolate step")
    parser.add_argument("--out-dir", required=True, type=cli.output_folder,
                        help="folder for density_<iteration:06d>.png")
    cli.add_sigma_argument(parser)
    parser.add_argument("--log-scale", action=argparse.BooleanOptionalAction, help="log-scale density axis")
    parser.add_argument("--dpi", type=cli.positive_int)
    return step_settings.use_defaults(parser, PlotSpectraSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), PlotSpectraSettings, argv))
    return 0


def run(settings: PlotSpectraSettings) -> Path:
    """One density figure per spectrum of ``settings.spectra`` in ``settings.out_dir`` (one width and axes for all);
    returns the folder."""
    args = settings
    step_settings.check_positive(args, "dpi")
    cli.check_outputs(folders=(args.out_dir,))
    cli.check_sigma(args.sigma)
    from .render.figures import save_figure
    from .render.spectrum_plots import (
        common_density,
        density_title,
        density_ylim,
        draw_blocks,
        plot_density,
        plot_skipped,
        sigma_record,
    )
    from .storage.atomic import atomic_folder
    from .storage.spectra import load_spectra

    spectra = load_spectra(args.spectra)
    if not spectra.entries and not spectra.skipped:
        raise ValueError(f"{args.spectra} holds no spectra")
    label = "point" if "t" in spectra.attrs else "iteration"  # the interpolate step keys its spectra by point
    out = Path(args.out_dir)
    with atomic_folder(out) as staging:
        for key, reason in spectra.skipped.items():
            save_figure(plot_skipped(f"{label} {key}", reason), staging / f"density_{key:06d}.png", dpi=args.dpi)
        if not spectra.entries:
            print(f"warning: {args.spectra} holds only skipped (non-finite) checkpoints: wrote {len(spectra.skipped)} "
                  f"blank plots to {out}", file=sys.stderr)
            return out
        density = common_density(spectra, args.sigma)
        xlim = (float(density.grid[0]), float(density.grid[-1]))
        ylim = density_ylim(density.top, args.log_scale)
        for key, values in density.densities.items():
            fig = plot_density(density.grid, values, log_scale=args.log_scale, xlim=xlim, ylim=ylim,
                               title=density_title(spectra.entries[key], label), sigma=density.sigma)
            draw_blocks(fig, spectra.entries[key], density.grid, density.sigma, log_scale=args.log_scale)
            save_figure(fig, staging / f"density_{key:06d}.png", dpi=args.dpi,
                        metadata=sigma_record(density.sigma, density.rule))
    skipped = f" and {len(spectra.skipped)} blank ones of skipped (non-finite) points" if spectra.skipped else ""
    print(f"wrote {len(density.densities)} density plots{skipped} to {out} (sigma {density.sigma:.3g}, "
          f"{density.rule})", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
