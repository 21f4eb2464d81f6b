"""Eigenvalue density plots (paper Figures 1, 7, 8): the Gaussian-smoothed SLQ density, optionally on a
log scale, which shows the few large outliers next to the bulk near zero."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Densities below this are drawn as this value on a log axis (the Gaussian tails underflow to 0).
LOG_FLOOR = 1e-7


def plot_density(grid: np.ndarray, density: np.ndarray, ax: Axes | None = None, *, log_scale: bool = True,
                 title: str | None = None, xlim: tuple[float, float] | None = None,
                 ylim: tuple[float, float] | None = None) -> Figure:
    """Density of the Hessian's eigenvalues against the eigenvalue; returns the figure."""
    if ax is None:
        fig = Figure(figsize=(5, 4))
        ax = fig.add_subplot()
    grid = np.asarray(grid, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    if log_scale:
        ax.semilogy(grid, np.maximum(density, LOG_FLOOR), color="tab:blue", lw=1.2)
    else:
        ax.plot(grid, density, color="tab:blue", lw=1.2)
        ax.fill_between(grid, density, alpha=0.25, color="tab:blue")
    ax.axvline(0.0, color="0.5", lw=0.6, ls="--")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)" if log_scale else "density")
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    return ax.figure
