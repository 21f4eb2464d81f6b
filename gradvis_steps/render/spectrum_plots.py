"""Eigenvalue density plots (paper Figures 1, 7, 8): the Gaussian-smoothed SLQ density, optionally on a
log scale, which shows the few large outliers next to the bulk near zero."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..core.slq import default_density_grid, gaussian_density, resolve_sigma
from ..storage.spectra import CheckpointSpectrum, Spectra
from .figures import new_axes

#: Densities below this are drawn as this value on a log axis (the Gaussian tails underflow to 0).
LOG_FLOOR = 1e-7


@dataclass(frozen=True, eq=False)
class DensitySet:
    """Densities of points shown together: one grid, one Gaussian width (and the rule that chose it)."""

    grid: np.ndarray
    densities: dict[int, np.ndarray]
    sigma: float
    rule: str

    @property
    def top(self) -> float:
        """Largest density value of the set (a common y limit)."""
        return max(float(d.max()) for d in self.densities.values())


def common_density(spectra: Spectra, sigma: float | None = None, n_points: int = 2000) -> DensitySet:
    """All densities of ``spectra`` on one grid with one width (core.slq.resolve_sigma over all their nodes), so
    the points of a sequence stay comparable."""
    if not spectra.entries:
        raise ValueError("no spectra to draw densities from")
    nodes = [entry.nodes for entry in spectra.entries.values()]
    width, rule = resolve_sigma(nodes, sigma)
    if rule != "explicit":
        rule = f"{rule} over the {len(nodes)} point(s) shown together"
    grid = default_density_grid(np.concatenate([n.ravel() for n in nodes]), n_points=n_points, sigma=width)
    densities = {key: gaussian_density(e.nodes, e.weights, grid, width) for key, e in spectra.entries.items()}
    return DensitySet(grid, densities, width, rule)


def sigma_record(sigma: float, rule: str) -> dict[str, str]:
    """PNG text metadata recording the density's Gaussian width and how it was chosen."""
    return {"Description": f"eigenvalue density smoothed with sigma={sigma!r} ({rule})",
            "gradvis:sigma": repr(float(sigma)), "gradvis:sigma_rule": rule}


def density_title(entry: CheckpointSpectrum, label: str = "iteration") -> str:
    """One-line title of a point's density: extremes and the Hutchinson trace."""
    s = entry.summary
    return (f"{label} {entry.iteration}: λmax={s['lambda_max']:.3g}, λmin={s['lambda_min']:.3g}, "
            f"tr≈{s['trace_estimate']:.3g}")


def plot_density(grid: np.ndarray, density: np.ndarray, ax: Axes | None = None, *, log_scale: bool = True,
                 title: str | None = None, xlim: tuple[float, float] | None = None,
                 ylim: tuple[float, float] | None = None, sigma: float | None = None) -> Figure:
    """Density of the Hessian's eigenvalues against the eigenvalue (``sigma`` shown in the x label); returns the
    figure."""
    ax = new_axes(ax, figsize=(5, 4))
    grid = np.asarray(grid, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    if log_scale:
        ax.semilogy(grid, np.maximum(density, LOG_FLOOR), color="tab:blue", lw=1.2)
    else:
        ax.plot(grid, density, color="tab:blue", lw=1.2)
        ax.fill_between(grid, density, alpha=0.25, color="tab:blue")
    ax.axvline(0.0, color="0.5", lw=0.6, ls="--")
    ax.set_xlabel(density_xlabel(sigma))
    ax.set_ylabel("density (log scale)" if log_scale else "density")
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize="small")
    return ax.figure


def draw_blocks(fig: Figure, entry: CheckpointSpectrum, grid: np.ndarray, sigma: float, *,
                log_scale: bool = True) -> Figure:
    """Add one curve per Hessian block of ``entry`` (its spectra of ``H[S, S]``, each a density of its own
    dimension) to the density figure ``fig``, smoothed with the whole model's ``sigma`` on its ``grid`` (a block's
    eigenvalues lie inside the whole spectrum: Cauchy interlacing), labelled with the block's top Ritz value and
    trace; a figure without blocks is returned unchanged."""
    if not entry.blocks:
        return fig
    ax = fig.axes[0]
    ax.lines[0].set_label(f"whole: λmax={entry.summary['lambda_max']:.3g}, tr≈{entry.summary['trace_estimate']:.3g}")
    for name, block in entry.blocks.items():
        density = gaussian_density(block.nodes, block.weights, grid, sigma)
        top = block.summary.get("ritz_top", block.summary["lambda_max"])
        label = f"{name}: λmax={top:.3g}, tr≈{block.summary['trace_estimate']:.3g}"
        ax.plot(grid, np.maximum(density, LOG_FLOOR) if log_scale else density, lw=0.9, alpha=0.8, label=label)
    ax.legend(fontsize="xx-small", loc="upper right")
    return fig


#: why a point of each kind has no spectrum (a checkpoint of training, a point of an interpolation line)
SKIP_CAUSES = {"iteration": "training diverged there", "point": "the loss overflows there"}


def skipped_note(label: str, reason: str) -> str:
    """The text a blank density panel shows for a point without a spectrum (``label``: e.g. "iteration 5")."""
    cause = SKIP_CAUSES.get(label.split()[0], "not finite")
    return f"no spectrum at {label}:\nskipped, {reason}\n({cause})"


def plot_skipped(label: str, reason: str, ax: Axes | None = None) -> Figure:
    """A blank density panel for a point whose spectrum was skipped (non-finite), saying so (``label``: e.g.
    "iteration 5", "point 3"); returns the figure."""
    ax = new_axes(ax, figsize=(5, 4))
    ax.set_xlabel("eigenvalue")
    ax.set_yticks([])
    ax.set_title(f"{label}: skipped", fontsize="small")
    ax.text(0.5, 0.5, skipped_note(label, reason), ha="center", va="center", transform=ax.transAxes,
            color="tab:red")
    return ax.figure


def density_xlabel(sigma: float | None) -> str:
    """The density's x label, with its Gaussian width when known."""
    return "eigenvalue" if sigma is None or not np.isfinite(sigma) else f"eigenvalue   (σ = {sigma:.3g})"


def density_ylim(top: float, log_scale: bool) -> tuple[float, float]:
    """Y limits that fit densities up to ``top`` (log: from the floor)."""
    return (LOG_FLOOR, top * 2) if log_scale else (0.0, top * 1.05)
