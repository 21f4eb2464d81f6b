"""Video frames in the paper's layouts (Figures 1, 7 and 8), rendered cheaply.

Training (Figure 1): the 3D loss surface with the trajectory so far and the current point on it | the 2D contour
with the same | the Hessian's eigenvalue density at that checkpoint. With several landscapes centred at different
checkpoints (a moving frame), iteration t is drawn on the one whose centre is the largest <= t (the first one if
none is). Interpolation (Figure 8): [the plane through both minima and A's initial point, with the current point
of the line] | the loss along the line with the current point | the density there.

Every density of a sequence uses one grid and one Gaussian width (``render.spectrum_plots.common_density``), so
frames stay comparable. A point whose spectrum was skipped (non-finite: the run diverged there) keeps its frame,
with a blank density panel saying so. The static parts (surface, contours, colorbar, axes) are drawn once per
landscape into a background; each frame restores that background and draws only the moving artists (paths, markers,
density curve, titles), so a frame costs a few artists and one PNG encoding even with a 3D axes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from ..core.grid import LandscapeResult
from ..storage.atomic import atomic_path, write_json
from ..storage.spectra import Spectra
from .landscape_plots import plot_contour, plot_line, plot_surface
from .spectrum_plots import (
    LOG_FLOOR,
    DensitySet,
    common_density,
    density_xlabel,
    density_ylim,
    sigma_record,
    skipped_note,
)

__all__ = ["landscape_for", "centre_of", "line_to_plane", "TrainingFrames", "InterpolationFrames", "write_frames"]


# ------------------------------------------------------------------------------------------- geometry rules
def centre_of(landscape: LandscapeResult) -> int:
    """Training iteration at a landscape's origin: its ``center_iteration``, or (older files) its last checkpoint."""
    if landscape.center_iteration is not None:
        return int(landscape.center_iteration)
    if landscape.iterations is None or landscape.iterations.size == 0:
        raise ValueError("a landscape without center_iteration needs the trajectory's iterations to find its centre")
    return int(landscape.iterations[-1])


def landscape_for(centres: Sequence[int], iteration: int) -> int:
    """Index of the landscape that draws ``iteration``: the largest centre <= iteration, else the smallest centre.

    ``centres`` must increase strictly (one landscape per centre)."""
    c = np.asarray(centres, dtype=np.int64)
    if c.size == 0:
        raise ValueError("no landscapes to choose from")
    if np.any(np.diff(c) <= 0):
        raise ValueError(f"landscape centres must be distinct and ascending, got {c.tolist()}")
    return max(int(np.searchsorted(c, int(iteration), side="right")) - 1, 0)


def line_to_plane(t: np.ndarray | Sequence[float], plane: LandscapeResult) -> np.ndarray:
    """Plane coordinates ``(n, 2)`` of the line's points ``theta(t) = (1 - t) theta_A + t theta_B``.

    The interpolation plane (``directions --method interpolation``) is ``theta_A + x (theta_B - theta_A) +
    y (theta_A,init - theta_A)`` centred at A's final checkpoint, so ``theta(t) - theta_A = t (theta_B - theta_A)``
    lies at ``(t, 0)``: minimum A at (0, 0), minimum B at (1, 0), A's initial point at (0, 1)."""
    check_interpolation_plane(plane)
    t = np.asarray(t, dtype=np.float64).ravel()
    return np.column_stack([t, np.zeros_like(t)])


def check_interpolation_plane(plane: LandscapeResult) -> None:
    """Reject a landscape that is not the 2D interpolation plane centred at run A's final checkpoint."""
    if plane.ndim != 2 or plane.method != "interpolation":
        raise ValueError(f"--plane must be a 2D landscape along interpolation directions, got a {plane.ndim}D "
                         f"landscape along {plane.method!r} directions")
    if plane.center_iteration is not None and plane.iterations is not None and plane.iterations.size \
            and plane.center_iteration != int(plane.iterations[-1]):
        raise ValueError(f"--plane is centred at iteration {plane.center_iteration}, not at run A's final "
                         f"checkpoint (iteration {int(plane.iterations[-1])}) where the line starts")


# ------------------------------------------------------------------------------------------------ drawing
class _Blitter:
    """Renders a figure to RGBA images: static artists once per background, animated ones every frame."""

    def __init__(self, fig: Figure):
        self.fig, self.canvas = fig, FigureCanvasAgg(fig)
        self.animated: list[Artist] = []
        self.background: Any = None

    def animate(self, *artists: Artist) -> None:
        """Mark ``artists`` as moving: left out of the background, drawn on every frame."""
        for artist in artists:
            artist.set_animated(True)
        self.animated.extend(artists)

    def forget(self, axes: Sequence[Axes]) -> None:
        """Drop the background and the moving artists of ``axes`` (they are about to be cleared and redrawn)."""
        self.background = None
        self.animated = [a for a in self.animated if a.axes not in axes]

    def render(self) -> np.ndarray:
        """The current frame as an ``(h, w, 4)`` uint8 array."""
        if self.background is None:
            self.canvas.draw()
            self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        else:
            self.canvas.restore_region(self.background)
        for artist in self.animated:
            if artist.axes is not None:
                artist.axes.draw_artist(artist)
            else:
                self.fig.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba()).copy()


class _DensityPanel:
    """The density axes: one curve whose values change per frame, fixed limits for the whole sequence."""

    def __init__(self, ax: Axes, density: DensitySet, log_scale: bool, blitter: _Blitter):
        self.ax, self.density, self.log_scale = ax, density, log_scale
        (self.line,) = ax.plot(density.grid, np.full_like(density.grid, LOG_FLOOR), color="tab:blue", lw=1.2)
        ax.axvline(0.0, color="0.5", lw=0.6, ls="--")
        ax.set_xlim(density.grid[0], density.grid[-1])
        if log_scale:
            ax.set_yscale("log")
        ax.set_ylim(*density_ylim(density.top, log_scale))
        ax.set_xlabel(density_xlabel(density.sigma))
        ax.set_ylabel("density (log scale)" if log_scale else "density")
        self.title = ax.set_title(" ", fontsize="small")
        self.note = ax.text(0.5, 0.5, "", ha="center", va="center", transform=ax.transAxes, color="tab:red")
        blitter.animate(self.line, self.title, self.note)

    def show_skipped(self, label: str, reason: str) -> None:
        """A blank panel for a point whose spectrum was skipped, saying why."""
        self.line.set_ydata(np.full_like(self.density.grid, np.nan))
        self.note.set_text(skipped_note(label, reason))
        self.title.set_text("no spectrum (skipped)")

    def show(self, key: int, summary: dict[str, float]) -> None:
        """Show the density of point ``key`` and its extremes and negative mass in the title."""
        values = self.density.densities[key]
        self.note.set_text("")
        self.line.set_ydata(np.maximum(values, LOG_FLOOR) if self.log_scale else values)
        tol = summary.get("negative_tol", 0.0)
        self.title.set_text(f"λmax={summary['lambda_max']:.3g}  λmin={summary['lambda_min']:.3g}  "
                            f"negative mass={summary['negative_mass']:.2%} (λ < -{tol:g}·max|λ|)")


def _contour_colorbar(fig: Figure, ax: Axes, cax: Axes) -> None:
    """A loss colorbar for the filled contours of ``ax`` in the fixed axes ``cax`` (no space taken from ``ax``)."""
    filled = [c for c in ax.collections if isinstance(c, ContourSet) and c.filled]
    if filled:
        fig.colorbar(filled[0], cax=cax, label="loss", format="%.3g")
    else:
        cax.set_axis_off()


class _Sequence:
    """Common parts of a frame sequence: the figure, the blitter, the density panel, the record."""

    kind = ""

    def __init__(self, spectra: Spectra, figsize: tuple[float, float], dpi: int, sigma: float | None):
        if not spectra.entries:
            more = f" (all {len(spectra.skipped)} skipped as non-finite: the run diverged)" if spectra.skipped else ""
            raise ValueError(f"no spectra to draw frames from{more}")
        self.spectra = spectra
        self.skipped = spectra.skipped  # these points get a frame with a blank density panel
        self.keys = sorted({int(k) for k in spectra.iterations} | set(self.skipped))
        self.density = common_density(spectra, sigma)
        self.figure = Figure(figsize=figsize, dpi=dpi)
        self.blitter = _Blitter(self.figure)
        self.suptitle = self.figure.suptitle(" ")
        self.blitter.animate(self.suptitle)
        self.used: list[int] = []  # per frame: index of the landscape drawn (training) or 0

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What the sequence shows and how its densities were smoothed (written beside the frames)."""
        return {"kind": self.kind, "keys": self.keys, "sigma": self.density.sigma, "sigma_rule": self.density.rule,
                "size_px": [int(round(v)) for v in self.figure.get_size_inches() * self.figure.dpi],
                **({"skipped": [{"iteration": k, "reason": r} for k, r in self.skipped.items()]}
                   if self.skipped else {})}

    def show_density(self, key: int, label: str) -> None:
        """The density panel of point ``key``: its density, or a blank panel if its spectrum was skipped."""
        if key in self.skipped:
            self.panel.show_skipped(f"{label} {key}", self.skipped[key])
        else:
            self.panel.show(key, self.spectra.entries[key].summary)


class TrainingFrames(_Sequence):
    """Figure 1's layout for every checkpoint with a spectrum: 3D surface | contour | density (contour levels by the
    level rule, :func:`~.landscape_plots.uses_log_levels`, or log-spaced with ``log_levels``)."""

    kind = "training"

    def __init__(self, landscapes: Sequence[LandscapeResult], spectra: Spectra, *, sigma: float | None = None,
                 log_scale: bool = True, log_levels: bool = False, dpi: int = 80):
        if not landscapes:
            raise ValueError("training frames need at least one landscape")
        for number, item in enumerate(landscapes):
            if item.ndim != 2 or item.trajectory is None or item.iterations is None:
                missing = "" if item.trajectory is not None and item.iterations is not None else " without a trajectory"
                raise ValueError(f"landscape {number + 1}: training frames need a 2D landscape with a projected "
                                 f"trajectory, got a {item.ndim}D one{missing}")
        order = sorted(range(len(landscapes)), key=lambda i: centre_of(landscapes[i]))
        self.landscapes = [landscapes[i] for i in order]
        self.order = order  # position in the sorted list -> index in the given list
        self.centres = [centre_of(item) for item in self.landscapes]
        if len(set(self.centres)) != len(self.centres):
            raise ValueError(f"two landscapes are centred at the same iteration: centres {sorted(self.centres)}")
        super().__init__(spectra, (16, 5), dpi, sigma)
        self.rows = [{int(it): row for row, it in enumerate(item.iterations)} for item in self.landscapes]
        for key in self.keys:
            pick = landscape_for(self.centres, key)
            if key not in self.rows[pick]:
                raise ValueError(f"the spectrum at iteration {key} has no checkpoint in the trajectory of the "
                                 f"landscape centred at iteration {self.centres[pick]}")
        self.log_levels = log_levels
        fig = self.figure
        self.ax3d = fig.add_axes((0.0, 0.04, 0.33, 0.86), projection="3d")
        self.ax2d = fig.add_axes((0.385, 0.12, 0.24, 0.74))
        self.cax = fig.add_axes((0.632, 0.12, 0.008, 0.74))
        self.panel = _DensityPanel(fig.add_axes((0.745, 0.12, 0.245, 0.74)), self.density, log_scale, self.blitter)
        self.current = -1

    def _draw_landscape(self, index: int) -> None:
        """Static parts of landscape ``index`` (surface, contours, colorbar, start) and its moving artists."""
        item = self.landscapes[index]
        self.blitter.forget([self.ax3d, self.ax2d])
        for ax in (self.ax3d, self.ax2d, self.cax):
            ax.cla()
        plot_surface(item, self.ax3d, show_trajectory=False)
        self.ax3d.zaxis.set_major_locator(MaxNLocator(5))
        self.ax3d.zaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        self.ax3d.tick_params(labelsize="small")
        plot_contour(item, self.ax2d, log_levels=self.log_levels or None, show_trajectory=False, colorbar=False)
        _contour_colorbar(self.figure, self.ax2d, self.cax)
        traj, z = item.trajectory, self._heights(item)
        finite = np.isfinite(z)
        if finite.any():  # the path is drawn at its projected loss: keep it inside the box
            lo, hi = self.ax3d.get_zlim()
            self.ax3d.set_zlim(min(lo, float(z[finite].min())), max(hi, float(z[finite].max())))
        self.ax3d.computed_zorder = False  # the path over the surface, not depth-sorted behind it
        # arrays, not lists: matplotlib's 3D lines fail to draw NaN (a skipped checkpoint) given as lists
        self.ax3d.plot(traj[:1, 0], traj[:1, 1], z[:1], "o", color="white", mec="k", ms=6, zorder=4)
        self.ax2d.plot(traj[0, 0], traj[0, 1], "o", color="white", mec="k", ms=7, zorder=4)
        self.ax2d.plot(0.0, 0.0, "+", color="k", ms=9, mew=1.5, zorder=4)
        centre = f"centre: iteration {self.centres[index]}"
        self.ax2d.set_title(centre if len(self.landscapes) > 1 else "", fontsize="small")
        (self.path3d,) = self.ax3d.plot([], [], [], "-", color="tab:red", lw=1.6, zorder=5)
        (self.point3d,) = self.ax3d.plot([], [], [], "o", color="tab:red", mec="k", ms=7, zorder=6)
        (self.path2d,) = self.ax2d.plot([], [], "-", color="tab:red", lw=1.4, zorder=5)
        (self.point2d,) = self.ax2d.plot([], [], "o", color="tab:red", mec="k", ms=8, zorder=6)
        self.blitter.animate(self.path3d, self.point3d, self.path2d, self.point2d)
        self.current = index

    @staticmethod
    def _heights(item: LandscapeResult) -> np.ndarray:
        """Heights of the trajectory on the surface: the loss at the projected points (else at the checkpoints)."""
        z = item.trajectory_loss if item.trajectory_loss is not None else item.checkpoint_loss
        return np.full(len(item.trajectory), np.nan) if z is None else np.asarray(z, dtype=np.float64)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        self.used = []
        for key in self.keys:
            index = landscape_for(self.centres, key)
            if index != self.current:
                self._draw_landscape(index)
            item, row = self.landscapes[index], self.rows[index][key]
            traj, z = item.trajectory, self._heights(item)
            self.path3d.set_data_3d(traj[: row + 1, 0], traj[: row + 1, 1], z[: row + 1])
            self.point3d.set_data_3d(traj[row:row + 1, 0], traj[row:row + 1, 1], z[row:row + 1])
            self.path2d.set_data(traj[: row + 1, 0], traj[: row + 1, 1])
            self.point2d.set_data([traj[row, 0]], [traj[row, 1]])
            self.show_density(key, "iteration")
            loss = item.checkpoint_loss[row] if item.checkpoint_loss is not None else np.nan
            self.suptitle.set_text(f"iteration {key}   loss {loss:.4g}")
            self.used.append(self.order[index])
            yield key, self.blitter.render()

    def record(self) -> dict[str, Any]:
        """The base record plus each landscape's centre and which landscape drew each frame."""
        return {**super().record(), "centres": [self.centres[self.order.index(i)] for i in range(len(self.order))],
                "landscape_of_frame": list(self.used)}


class InterpolationFrames(_Sequence):
    """Figure 8's layout for every point of the line with a spectrum: [plane |] line loss | density.

    The plane's levels follow the level rule of its stand-alone contour (``plane_contour.png``,
    :func:`~.landscape_plots.uses_log_levels`: log-spaced); ``log_levels`` True asks for log-spaced levels anyway."""

    kind = "interpolation"

    def __init__(self, line: LandscapeResult, spectra: Spectra, *, plane: LandscapeResult | None = None,
                 sigma: float | None = None, log_scale: bool = True, log_levels: bool = False, dpi: int = 80):
        if line.ndim != 1:
            raise ValueError(f"interpolation frames need a 1D line landscape, got {line.ndim}D")
        ts = line.axes[0]
        bad = [int(key) for key in [*spectra.iterations, *spectra.skipped] if not 0 <= key < len(ts)]
        if bad:
            raise ValueError(f"spectra keys {bad[:5]} are not point indices of the line ({len(ts)} points)")
        super().__init__(spectra, (16, 5) if plane is not None else (11, 4.5), dpi, sigma)
        self.line, self.plane, self.ts = line, plane, ts
        fig = self.figure
        if plane is not None:
            xy = line_to_plane(ts, plane)
            ax = fig.add_axes((0.05, 0.12, 0.24, 0.74))
            plot_contour(plane, ax, log_levels=log_levels or None, show_trajectory=False, colorbar=False,
                         marks=[(0.0, 0.0, "minimum A"), (1.0, 0.0, "minimum B"), (0.0, 1.0, "initial point of A")])
            self.cax = fig.add_axes((0.295, 0.12, 0.008, 0.74))
            _contour_colorbar(fig, ax, self.cax)
            ax.plot(xy[:, 0], xy[:, 1], "--", color="white", lw=1.0, zorder=3)
            (self.plane_point,) = ax.plot([], [], "o", color="tab:red", mec="k", ms=8, zorder=6)
            self.blitter.animate(self.plane_point)
            self.plane_xy = xy
            line_rect, density_rect = (0.385, 0.12, 0.27, 0.74), (0.745, 0.12, 0.245, 0.74)
        else:
            line_rect, density_rect = (0.07, 0.12, 0.39, 0.74), (0.57, 0.12, 0.41, 0.74)
        ax_line = fig.add_axes(line_rect)
        plot_line(line, ax_line, show_accuracy=False, show_trajectory=False)
        (self.line_point,) = ax_line.plot([], [], "o", color="tab:red", mec="k", ms=9, zorder=5)
        self.blitter.animate(self.line_point)
        self.panel = _DensityPanel(fig.add_axes(density_rect), self.density, log_scale, self.blitter)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        self.used = []
        for key in self.keys:
            self.line_point.set_data([self.ts[key]], [self.line.loss[key]])
            if self.plane is not None:
                self.plane_point.set_data([self.plane_xy[key, 0]], [self.plane_xy[key, 1]])
            self.show_density(key, "point")
            self.suptitle.set_text(f"t = {self.ts[key]:.3f}   loss {self.line.loss[key]:.4g}")
            self.used.append(0)
            yield key, self.blitter.render()


@dataclass(frozen=True)
class WrittenFrames:
    """Frame files written by :func:`write_frames`, in order, and the record beside them."""

    paths: list[Path]
    record: dict[str, Any]


def write_frames(frames: _Sequence, folder: Path, extra: dict[str, Any] | None = None) -> WrittenFrames:
    """Save ``frame_000000.png``, ... in order (the names ffmpeg's sequence reader expects), each atomically and
    with the density's sigma in its PNG text, plus ``frames.json`` (keys, sigma and its rule, ``extra``)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    folder.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for name, text in sigma_record(frames.density.sigma, frames.density.rule).items():
        info.add_text(name, text)
    paths = []
    for index, (_, image) in enumerate(frames):
        path = folder / f"frame_{index:06d}.png"
        with atomic_path(path, ".png") as tmp:
            Image.fromarray(image[..., :3]).save(tmp, format="PNG", pnginfo=info, compress_level=3)
        paths.append(path)
    record = {**frames.record(), **(extra or {}), "frames": [p.name for p in paths]}
    write_json(folder / "frames.json", record)
    return WrittenFrames(paths, record)
