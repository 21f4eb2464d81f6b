"""Step: the results of an analysis sweep side by side in one figure: eigenvalue densities or landscapes.

    python -m gradvis_steps.compare --spectra m20/spectra.h5 m30/spectra.h5 --labels "m=20" "m=30" \\
        --out compare_spectra.png
    python -m gradvis_steps.compare --landscapes r20/pca.h5 r40/pca.h5 --labels "resolution 20" "resolution 40" \\
        --out compare_landscapes.png

Spectra: the densities of one checkpoint (``--iteration``, default the last one every file holds) are
smoothed with one Gaussian width and evaluated on one grid, so the curves are comparable, and drawn on
one axes beside a table of lambda_max, lambda_min and the negative mass of each; a file that skipped that
checkpoint (non-finite: its run diverged there) is named in the legend and the table without a curve. Landscapes:
2D ones as contours side by side on one set of colour levels (the same loss has the same colour in every panel),
1D ones as curves on one axes; non-finite losses are masked and counted on the figure.

The files must belong to one run (``storage.runs``): a sweep varies the analysis, not the training. To put
different runs side by side (e.g. two seeds), say so with ``--across-runs``; the labels should then name the runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import cli, step_settings
from .defaults import schema_default

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .core.grid import LandscapeResult
    from .storage.spectra import Spectra

#: The figures of each spectrum in the table: (summary key, column heading).
TABLE_COLUMNS = (("lambda_max", "λmax"), ("lambda_min", "λmin"), ("negative_mass", "negative mass"))
DENSITY_POINTS = 2000


@dataclass(frozen=True, kw_only=True)
class CompareSettings:
    """Settings of the compare step: the spectra or landscape files (one kind), their labels, the figure."""

    out: str
    spectra: tuple[str, ...] | None = None
    landscapes: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    iteration: int | None = None
    sigma: float | None = schema_default("spectra.sigma")
    log_scale: bool | None = None
    across_runs: bool = False
    title: str | None = None
    dpi: int = 120


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--spectra", nargs="+", metavar="FILE", help="spectra files (.h5) from the spectrum step")
    inputs.add_argument("--landscapes", nargs="+", metavar="FILE",
                        help="landscape files (.h5) from the landscape step, all 1D or all 2D")
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="one legend label per file, in the same order (default: the file names)")
    parser.add_argument("--out", required=True, type=cli.output_file, help="figure to write (.png/.pdf/.svg)")
    parser.add_argument("--iteration", type=int,
                        help="checkpoint whose spectra are compared (default: the last one common to all files)")
    cli.add_sigma_argument(parser)  # the nodes shown together: every file's at the compared checkpoint
    parser.add_argument("--log-scale", action=argparse.BooleanOptionalAction,
                        help="log-scale density axis (spectra; default on), log-spaced contour levels or log loss "
                             "axis (landscapes; default off)")
    parser.add_argument("--across-runs", action="store_true",
                        help="the files may belong to different training runs (e.g. seeds side by side); without it "
                             "they must all belong to one run")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--dpi", type=cli.positive_int)
    return step_settings.use_defaults(parser, CompareSettings)


# -------------------------------------------------------------------------------------------------- spectra
@dataclass(frozen=True)
class SpectraComparison:
    """The densities of several spectra at one checkpoint on a common grid, and their table rows."""

    iteration: int
    sigma: float
    grid: np.ndarray
    densities: np.ndarray  # (files, points); NaN for a file that skipped the checkpoint
    labels: tuple[str, ...]
    rows: tuple[tuple[float, ...], ...]  # one per file: the TABLE_COLUMNS figures
    skipped: tuple[str | None, ...] = ()  # per file: why it has no spectrum there (non-finite), else None


def common_iteration(spectra: Sequence[Spectra], paths: Sequence[str], wanted: int | None) -> int:
    """``wanted`` if every file holds it (or skipped it as non-finite), else the last iteration all files hold; errors
    name the files."""
    held = [{int(i) for i in s.iterations} for s in spectra]
    for path, iterations in zip(paths, held, strict=True):
        if not iterations:
            raise ValueError(f"{path} holds no spectra")
    if wanted is not None:
        lacking = [f"{path} ({_span(iterations)})" for path, iterations, s in zip(paths, held, spectra, strict=True)
                   if wanted not in iterations and wanted not in s.skipped]
        if lacking:
            raise ValueError(f"--iteration {wanted} is missing from {', '.join(lacking)}")
        return wanted
    common = set.intersection(*held)
    if not common:
        listing = ", ".join(f"{path} ({_span(iterations)})" for path, iterations in zip(paths, held, strict=True))
        raise ValueError(f"no checkpoint iteration is common to all spectra files: {listing}; give files of the "
                         "same checkpoints or --iteration")
    return max(common)


def _span(iterations: set[int]) -> str:
    ordered = sorted(iterations)
    shown = ", ".join(map(str, ordered[:4])) + (", ..." if len(ordered) > 4 else "")
    return f"iterations {shown}"


def compare_spectra(spectra: Sequence[Spectra], paths: Sequence[str], labels: Sequence[str],
                    iteration: int | None = None, sigma: float | None = None) -> SpectraComparison:
    """Densities of every file's checkpoint ``iteration`` with one sigma on one grid (comparable curves), as the
    frames draw a sequence: the files' entries form one set for ``render.spectrum_plots.common_density``."""
    from .render.spectrum_plots import common_density
    from .storage.spectra import Spectra

    it = common_iteration(spectra, paths, iteration)
    entries = {index: s.entries[it] for index, s in enumerate(spectra) if it in s.entries}
    skipped = tuple(None if it in s.entries else s.skipped[it] for s in spectra)
    if not entries:
        raise ValueError(f"every file skipped iteration {it} as non-finite ({skipped[0]}): nothing to compare there")
    shown = common_density(Spectra(entries), sigma, n_points=DENSITY_POINTS)
    nothing = np.full_like(shown.grid, np.nan)
    densities = np.stack([shown.densities.get(index, nothing) for index in range(len(spectra))])
    rows = tuple(tuple(float(entries[index].summary.get(key, np.nan)) if index in entries else np.nan
                       for key, _ in TABLE_COLUMNS) for index in range(len(spectra)))
    return SpectraComparison(it, shown.sigma, shown.grid, densities, tuple(labels), rows, skipped)


def spectra_figure(comparison: SpectraComparison, *, log_scale: bool = True, title: str | None = None) -> Figure:
    """The densities overlaid with a legend (left) beside a table of their extreme eigenvalues (right)."""
    from matplotlib.figure import Figure

    from .render.spectrum_plots import LOG_FLOOR

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(2.2, 1))
    skipped = comparison.skipped or (None,) * len(comparison.labels)
    for label, density, reason in zip(comparison.labels, comparison.densities, skipped, strict=True):
        if reason is not None:  # a legend entry without a curve, saying why
            left.plot([], [], lw=1.2, ls=":", label=f"{label}: no spectrum (skipped, {reason})")
        elif log_scale:
            left.semilogy(comparison.grid, np.maximum(density, LOG_FLOOR), lw=1.2, label=label)
        else:
            left.plot(comparison.grid, density, lw=1.2, label=label)
    left.axvline(0.0, color="0.5", lw=0.6, ls="--")
    left.set_xlabel("eigenvalue")
    left.set_ylabel("density (log scale)" if log_scale else "density")
    left.set_title(f"iteration {comparison.iteration}, σ = {comparison.sigma:.3g}")
    left.legend(loc="best", fontsize="small")
    right.axis("off")
    cells = [[f"{value:.4g}" for value in row] if reason is None else ["skipped"] * len(row)
             for row, reason in zip(comparison.rows, skipped, strict=True)]
    table = right.table(cellText=cells, rowLabels=list(comparison.labels),
                        colLabels=[heading for _, heading in TABLE_COLUMNS], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.4)
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------- landscapes
def shared_levels(results: Sequence[LandscapeResult], log_levels: bool, n_levels: int = 30) -> np.ndarray | None:
    """Contour levels spanning the finite losses of all landscapes (one colour scale for every panel)."""
    from .render.landscape_plots import contour_levels

    return contour_levels(np.concatenate([np.ravel(r.loss) for r in results]), n_levels, log_levels)


def landscapes_figure(results: Sequence[LandscapeResult], paths: Sequence[str], labels: Sequence[str], *,
                      log_scale: bool = False, title: str | None = None) -> Figure:
    """2D landscapes as contours side by side on shared levels, or 1D ones as curves on one axes."""
    from matplotlib.figure import Figure

    from .render.landscape_plots import direction_labels, non_finite_note, plot_contour

    dims = {r.ndim for r in results}
    if len(dims) != 1 or dims - {1, 2}:
        listing = ", ".join(f"{path} ({r.ndim}D)" for path, r in zip(paths, results, strict=True))
        raise ValueError(f"the landscapes must be all 1D or all 2D: {listing}")
    if dims == {2}:
        n = len(results)
        fig = Figure(figsize=(4.6 * n + 1.2, 4.3), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, n, sharex=False, sharey=False))
        levels = shared_levels(results, log_scale)
        for k, (ax, result, label) in enumerate(zip(axes, results, labels, strict=True)):
            plot_contour(result, ax, log_levels=log_scale, levels=levels, colorbar=k == n - 1, title=label)
    else:
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for result, label in zip(results, labels, strict=True):
            loss = np.ma.masked_invalid(np.asarray(result.loss, dtype=np.float64))
            if log_scale:
                loss = np.ma.masked_where(loss.filled(np.nan) <= 0, loss.filled(np.nan))
            note = non_finite_note(result)
            ax.plot(result.axes[0], loss, lw=1.4, label=label if note is None else f"{label} ({note})")
        if log_scale:
            ax.set_yscale("log")
        xlabels = {direction_labels(r)[0] for r in results}
        ax.set_xlabel(xlabels.pop() if len(xlabels) == 1 else "coefficient along each landscape's direction")
        ax.set_ylabel("loss")
        ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), CompareSettings, argv))
    return 0


def run(settings: CompareSettings) -> Path:
    """One figure comparing the spectra (or the landscapes) of ``settings`` side by side; returns its path."""
    args = settings
    if (args.spectra is None) == (args.landscapes is None):
        raise ValueError("give spectra or landscapes (one of them)")
    step_settings.check_positive(args, "dpi")
    cli.check_outputs(files=(args.out,))
    paths = list(args.spectra or args.landscapes)
    labels = list(args.labels) if args.labels is not None else [Path(p).stem for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"--labels gives {len(labels)} label(s) for {len(paths)} file(s): "
                         f"{labels} for {paths}")
    if args.landscapes and (args.iteration is not None or args.sigma is not None):
        raise ValueError("--iteration and --sigma apply to --spectra only")
    cli.check_sigma(args.sigma)
    from .render.figures import save_figure
    from .storage import runs
    from .storage.landscape import load_landscape
    from .storage.spectra import load_spectra

    loaded = [load_spectra(p) if args.spectra else load_landscape(p) for p in paths]
    if not args.across_runs:  # a sweep varies the analysis of one run
        kind = "spectra file" if args.spectra else "landscape file"
        runs.check_same_runs(runs.Source(kind, path, item.runs) for path, item in zip(paths, loaded, strict=True))
    if args.spectra:
        comparison = compare_spectra(loaded, paths, labels, args.iteration, args.sigma)
        log_scale = True if args.log_scale is None else args.log_scale
        fig = spectra_figure(comparison, log_scale=log_scale, title=args.title)
        what = f"{len(paths)} spectra at iteration {comparison.iteration}"
    else:
        fig = landscapes_figure(loaded, paths, labels, log_scale=bool(args.log_scale), title=args.title)
        what = f"{len(paths)} landscapes"
    save_figure(fig, args.out, dpi=args.dpi)
    print(f"wrote {what} side by side to {args.out}", file=sys.stderr)
    return Path(args.out)


if __name__ == "__main__":
    sys.exit(cli.run(main))
