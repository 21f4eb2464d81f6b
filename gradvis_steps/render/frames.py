"""Video frames in the paper's layout: the landscape (or interpolation line) with the current point,
beside the Hessian's eigenvalue density at that point (Figures 1, 7 and 8).

The static part (contours, line) is drawn once; each frame only moves the trajectory, the marker and
the density curve, so a frame costs one image write.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..core.grid import LandscapeResult
from ..core.plots import plot_contour, plot_line, save_figure
from ..core.slq import gaussian_density
from ..storage.spectra import Spectra
from .spectrum_plots import LOG_FLOOR


def common_density(spectra: Spectra, n_points: int = 1000, sigma: float | None = None
                   ) -> tuple[np.ndarray, dict[int, np.ndarray], float]:
    """All densities on one grid and with one Gaussian width, so frames are comparable over time."""
    nodes = np.concatenate([e.nodes.ravel() for e in spectra.entries.values()])
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12)
    sigma = sigma if sigma is not None else width / 200.0
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, n_points)
    densities = {key: gaussian_density(e.nodes, e.weights, grid, sigma) for key, e in spectra.entries.items()}
    return grid, densities, sigma


class _DensityPanel:
    def __init__(self, ax: object, grid: np.ndarray, densities: dict[int, np.ndarray], log_scale: bool):
        self.ax, self.grid, self.densities, self.log_scale = ax, grid, densities, log_scale
        top = max(float(d.max()) for d in densities.values())
        (self.line,) = ax.plot(grid, np.full_like(grid, LOG_FLOOR), color="tab:blue", lw=1.2)
        ax.axvline(0.0, color="0.5", lw=0.6, ls="--")
        ax.set_xlim(grid[0], grid[-1])
        if log_scale:
            ax.set_yscale("log")
            ax.set_ylim(LOG_FLOOR, top * 2)
        else:
            ax.set_ylim(0, top * 1.05)
        ax.set_xlabel("eigenvalue of the Hessian")
        ax.set_ylabel("density (log scale)" if log_scale else "density")

    def show(self, key: int, summary: dict[str, float]) -> None:
        density = self.densities[key]
        self.line.set_ydata(np.maximum(density, LOG_FLOOR) if self.log_scale else density)
        tol = summary.get("negative_tol", 0.0)
        self.ax.set_title(f"λmax={summary['lambda_max']:.3g}  λmin={summary['lambda_min']:.3g}  "
                          f"negative mass={summary['negative_mass']:.2%} (λ < -{tol:g}·max|λ|)", fontsize="small")


def training_frames(landscape: LandscapeResult, spectra: Spectra, *, log_scale: bool = True,
                    log_levels: bool = False) -> Iterator[tuple[int, Figure]]:
    """One figure per checkpoint with a spectrum: contour + trajectory so far | density (Figure 7)."""
    if landscape.ndim != 2 or landscape.trajectory is None or landscape.iterations is None:
        raise ValueError("training frames need a 2D landscape with a projected trajectory")
    rows = {int(it): row for row, it in enumerate(landscape.iterations)}
    missing = [it for it in spectra.iterations if int(it) not in rows]
    if missing:
        raise ValueError(f"spectra at iterations {missing[:5]} have no checkpoint in the landscape's trajectory")
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    plot_contour(landscape, left, log_levels=log_levels, show_trajectory=False)
    traj = landscape.trajectory
    left.plot(traj[0, 0], traj[0, 1], "o", color="white", mec="k", ms=7, zorder=4)
    (path,) = left.plot([], [], "-", color="tab:red", lw=1.4, zorder=3)
    (current,) = left.plot([], [], "o", color="tab:red", mec="k", ms=8, zorder=5)
    grid, densities, _ = common_density(spectra)
    panel = _DensityPanel(right, grid, densities, log_scale)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    for iteration in spectra.iterations:
        row = rows[int(iteration)]
        path.set_data(traj[: row + 1, 0], traj[: row + 1, 1])
        current.set_data([traj[row, 0]], [traj[row, 1]])
        panel.show(int(iteration), spectra.entries[int(iteration)].summary)
        loss = landscape.checkpoint_loss[row] if landscape.checkpoint_loss is not None else np.nan
        fig.suptitle(f"iteration {int(iteration)}   loss {loss:.4g}")
        yield int(iteration), fig


def interpolation_frames(line: LandscapeResult, spectra: Spectra, *, log_scale: bool = True
                         ) -> Iterator[tuple[int, Figure]]:
    """One figure per point of the line between two minima: loss along the line | density (Figure 8)."""
    if line.ndim != 1:
        raise ValueError("interpolation frames need a 1D line landscape")
    ts = line.axes[0]
    missing = [key for key in spectra.iterations if not 0 <= key < len(ts)]
    if missing:
        raise ValueError(f"spectra keys {missing[:5]} are not point indices of the line ({len(ts)} points)")
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    plot_line(line, left, show_accuracy=False, show_trajectory=False)
    (current,) = left.plot([], [], "o", color="tab:red", mec="k", ms=9, zorder=5)
    grid, densities, _ = common_density(spectra)
    panel = _DensityPanel(right, grid, densities, log_scale)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    for key in spectra.iterations:
        current.set_data([ts[key]], [line.loss[key]])
        panel.show(int(key), spectra.entries[int(key)].summary)
        fig.suptitle(f"t = {ts[key]:.3f}   loss {line.loss[key]:.4g}")
        yield int(key), fig


def write_frames(frames: Iterator[tuple[int, Figure]], folder: Path, dpi: int = 80) -> list[Path]:
    """Save frames as ``frame_000000.png``, ... in order (the names ffmpeg's sequence reader expects)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (_, fig) in enumerate(frames):
        path = folder / f"frame_{index:06d}.png"
        save_figure(fig, path, dpi=dpi, close=False)
        paths.append(path)
    return paths
