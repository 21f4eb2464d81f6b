"""Matplotlib figures of a :class:`~..core.grid.LandscapeResult`: 2D contour, 3D surface, 1D line.

Non-finite grid values (NaN: not evaluated or diverged; inf: overflow) are masked and never crash a
plot; levels and log scales come from the finite values only; evaluated points that are not finite are
counted on the figure ("12 of 625 points non-finite (masked)"); a grid with no finite value gives a
figure that says so. Every function takes an optional ``ax``
(so the frames step can put a landscape beside a spectrum plot) and returns the Figure (built without pyplot,
:mod:`.figures`). One level rule (:func:`uses_log_levels`) decides linear or log-spaced levels for every figure of
a landscape, the stand-alone contour and the video frames alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from ..core.grid import LandscapeResult
from .figures import new_axes

__all__ = ["direction_labels", "contour_levels", "landscape_levels", "non_finite_note", "plot_contour",
           "plot_surface", "plot_line", "uses_log_levels"]

_EMPTY_MSG = "no finite loss values"


def direction_labels(result: LandscapeResult) -> list[str]:
    """Axis labels: the stored labels, else e.g. "PCA 1 (62.3% var)", "eigenvector 1 (λ=12.3)"."""
    labels = []
    for k in range(result.ndim):
        if k < len(result.labels) and result.labels[k]:
            labels.append(result.labels[k])
        elif result.method == "pca":
            r = result.explained_variance_ratio
            extra = f" ({100 * r[k]:.1f}% var)" if r is not None and k < r.size else ""
            labels.append(f"PCA {k + 1}{extra}")
        elif result.method == "eigenvector":
            ev = result.eigenvalues
            extra = f" (λ={ev[k]:.3g})" if ev is not None and k < ev.size else ""
            labels.append(f"eigenvector {k + 1}{extra}")
        else:
            labels.append(f"{result.method} direction {k + 1}")
    return labels


def _masked(z: np.ndarray) -> np.ma.MaskedArray:
    z = np.asarray(z, dtype=np.float64)
    return np.ma.masked_invalid(z)


def contour_levels(z: np.ndarray, n_levels: int = 30, log_levels: bool = False) -> np.ndarray | None:
    """Increasing contour levels spanning the finite values of ``z`` (log-spaced over the positive ones
    if ``log_levels``); None if there is no finite value. A constant field gets a tiny band around it."""
    zf = np.asarray(z, dtype=np.float64)
    zf = zf[np.isfinite(zf)]
    if log_levels:
        zf = zf[zf > 0]
    if zf.size == 0:
        return None
    lo, hi = float(zf.min()), float(zf.max())
    if log_levels:
        if hi <= lo * (1 + 1e-12):
            lo, hi = lo / 1.01, hi * 1.01
        return np.geomspace(lo, hi, n_levels)
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        pad = 1e-6 * max(1.0, abs(lo))
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, n_levels)


def _say_empty(ax: Axes, text: str = _EMPTY_MSG) -> None:
    kw: dict[str, Any] = {"ha": "center", "va": "center", "transform": ax.transAxes}
    if getattr(ax, "name", "") == "3d":
        ax.text2D(0.5, 0.5, text, **kw)
    else:
        ax.text(0.5, 0.5, text, **kw)


def uses_log_levels(result: LandscapeResult, log_levels: bool | None = None) -> bool:
    """The level rule of every figure of ``result``: ``log_levels`` where the caller says; by default log-spaced
    levels for an interpolation plane (``directions --method interpolation``), linear ones otherwise. The plane
    holds both minima and A's initial point, so its loss spans orders of magnitude (0.08 to 54 in the default
    workflow's plane): linear levels would paint everything near the minima, the part worth seeing, in the lowest
    level's colour."""
    if log_levels is not None:
        return bool(log_levels)
    return result.method == "interpolation" and result.ndim == 2


def landscape_levels(result: LandscapeResult, n_levels: int = 30, log_levels: bool | None = None) -> np.ndarray | None:
    """The contour levels of ``result`` under the level rule (:func:`uses_log_levels`): what :func:`plot_contour`
    draws when given no levels."""
    return contour_levels(result.loss, n_levels, uses_log_levels(result, log_levels))


def non_finite_note(result: LandscapeResult) -> str | None:
    """E.g. "12 of 625 points non-finite (masked)" when evaluated grid points overflowed, else None."""
    bad = result.non_finite_points
    return f"{bad} of {result.loss.size} points non-finite (masked)" if bad else None


def _note_non_finite(ax: Axes, result: LandscapeResult) -> None:
    """Write :func:`non_finite_note` in ``ax`` (a boxed line at the bottom; at the top of a 3D axes, whose bottom
    holds the axis labels)."""
    note = non_finite_note(result)
    if note is None:
        return
    kw: dict[str, Any] = {"ha": "center", "transform": ax.transAxes, "fontsize": "small", "color": "tab:red",
                          "bbox": {"facecolor": "white", "alpha": 0.8, "lw": 0}}
    if getattr(ax, "name", "") == "3d":
        ax.text2D(0.5, 0.95, note, va="top", **kw)
    else:
        ax.text(0.5, 0.02, note, va="bottom", **kw)


def _trajectory(result: LandscapeResult) -> np.ndarray | None:
    t = result.trajectory
    if t is None or t.shape[0] == 0:
        return None
    return t


def plot_contour(
    result: LandscapeResult,
    ax: Axes | None = None,
    *,
    log_levels: bool | None = None,
    n_levels: int = 30,
    cmap: str = "viridis",
    show_trajectory: bool = True,
    colorbar: bool = True,
    title: str | None = None,
    marks: Sequence[tuple[float, float, str]] = (),
    levels: Sequence[float] | np.ndarray | None = None,
) -> Figure:
    """2D filled contour + contour lines of the loss with the trajectory overlaid (start: circle, end:
    star), colorbar "loss", axes labelled by direction (paper Fig. 4-7). ``marks``: extra labelled points
    ``(x, y, label)`` in plane coordinates, e.g. the second minimum of an interpolation plane. ``levels``:
    increasing contour levels to use instead of ones spanning this landscape (positive ones with
    ``log_levels``), so that several landscapes share one colour scale. ``log_levels`` None: the level rule
    (:func:`uses_log_levels`)."""
    if result.ndim != 2:
        raise ValueError(f"plot_contour needs a 2D landscape, got {result.ndim}D")
    log_levels = uses_log_levels(result, log_levels)
    ax = new_axes(ax)
    fig = ax.figure
    x, y = result.axes
    X, Y = np.meshgrid(x, y, indexing="ij")
    Z = _masked(result.loss)
    if levels is None:
        levels = landscape_levels(result, n_levels, log_levels)
    else:
        levels = np.asarray(levels, dtype=np.float64)
        if levels.ndim != 1 or levels.size < 2 or not np.all(np.diff(levels) > 0) or not np.isfinite(levels).all():
            raise ValueError(f"levels must be at least 2 finite, increasing numbers, got {levels.tolist()}")
        if log_levels and levels[0] <= 0:
            raise ValueError(f"log-spaced levels must be positive, got {levels[0]} as the lowest")
    xl, yl = direction_labels(result)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    if x.size > 1 and y.size > 1:
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(y[0], y[-1])
    _note_non_finite(ax, result)
    if levels is None or Z.count() == 0:  # nothing finite (shared levels may still come from other landscapes)
        _say_empty(ax)
    elif min(x.size, y.size) >= 2:
        norm = None
        if log_levels:
            Z = np.ma.masked_where(Z.filled(np.nan) <= 0, Z.filled(np.nan))
            Z = np.ma.masked_invalid(Z)
            norm = LogNorm(vmin=levels[0], vmax=levels[-1])
        cs = ax.contourf(X, Y, Z, levels=levels, cmap=cmap, norm=norm, extend="neither")
        ax.contour(X, Y, Z, levels=levels, colors="k", linewidths=0.4, alpha=0.5, norm=norm)
        if colorbar:
            fig.colorbar(cs, ax=ax, label="loss", format=FormatStrFormatter("%.3g") if log_levels else None)
    if show_trajectory and (t := _trajectory(result)) is not None:
        ax.plot(t[:, 0], t[:, 1], "-", color="tab:red", lw=1.5, marker=".", ms=3, label="trajectory")
        ax.plot(t[0, 0], t[0, 1], "o", color="white", mec="k", ms=8, label="start")
        ax.plot(t[-1, 0], t[-1, 1], "*", color="gold", mec="k", ms=14, label="end")
    for (mx, my, label), marker in zip(marks, "Ds^v<>ph", strict=False):
        ax.plot(mx, my, marker, color="tab:orange", mec="k", ms=9, label=label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    return fig


def plot_surface(
    result: LandscapeResult,
    ax: Axes | None = None,
    *,
    log_z: bool | None = None,
    cmap: str = "viridis",
    show_trajectory: bool = True,
    title: str | None = None,
) -> Figure:
    """3D surface of the loss with the trajectory drawn at its projected loss (paper Fig. 4-6).

    Non-finite cells are left as holes. With ``log_z`` the z axis is ``log10(loss)`` (None: the level rule,
    :func:`uses_log_levels`, as the contour's levels).
    """
    if result.ndim != 2:
        raise ValueError(f"plot_surface needs a 2D landscape, got {result.ndim}D")
    log_z = uses_log_levels(result, log_z)
    ax = new_axes(ax, projection="3d", figsize=(7, 6))
    fig = ax.figure
    x, y = result.axes
    X, Y = np.meshgrid(x, y, indexing="ij")
    with np.errstate(divide="ignore", invalid="ignore"):
        Z = np.log10(result.loss) if log_z else np.array(result.loss, dtype=np.float64)
    Z = np.where(np.isfinite(Z), Z, np.nan)
    xl, yl = direction_labels(result)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_zlabel("log10 loss" if log_z else "loss")
    if title:
        ax.set_title(title)
    finite = np.isfinite(Z)
    _note_non_finite(ax, result)
    if not finite.any():
        _say_empty(ax)
        return fig
    if min(x.size, y.size) >= 2:
        vmin, vmax = float(Z[finite].min()), float(Z[finite].max())
        if vmax <= vmin:
            vmax = vmin + 1e-12 * max(1.0, abs(vmin))
        ax.plot_surface(
            X,
            Y,
            Z,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            rstride=1,
            cstride=1,
            linewidth=0,
            antialiased=True,
            alpha=0.85,
            zorder=1,
        )
        ax.set_zlim(vmin, vmax)
    if show_trajectory and (t := _trajectory(result)) is not None and result.trajectory_loss is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            zt = np.log10(result.trajectory_loss) if log_z else np.asarray(result.trajectory_loss, float)
        ok = np.isfinite(zt)
        if ok.any():
            ax.computed_zorder = False  # draw the path over the surface instead of depth-sorting it away
            ax.plot(
                t[ok, 0], t[ok, 1], zt[ok], "-", color="tab:red", lw=2, marker=".", ms=3, label="trajectory", zorder=3
            )
            i0, i1 = np.flatnonzero(ok)[[0, -1]]
            ax.scatter([t[i0, 0]], [t[i0, 1]], [zt[i0]], marker="o", color="white", edgecolors="k", s=40, zorder=4)
            ax.scatter([t[i1, 0]], [t[i1, 1]], [zt[i1]], marker="*", color="gold", edgecolors="k", s=120, zorder=4)
    return fig


def plot_line(
    result: LandscapeResult,
    ax: Axes | None = None,
    *,
    log_scale: bool = False,
    show_accuracy: bool = True,
    show_trajectory: bool = True,
    title: str | None = None,
) -> Figure:
    """1D loss curve along the direction (accuracy on a twin axis when available), trajectory points at
    their projected loss."""
    if result.ndim != 1:
        raise ValueError(f"plot_line needs a 1D landscape, got {result.ndim}D")
    ax = new_axes(ax, figsize=(6, 4))
    fig = ax.figure
    x = result.axes[0]
    z = _masked(result.loss)
    if log_scale:
        z = np.ma.masked_where(z.filled(np.nan) <= 0, z.filled(np.nan))
        z = np.ma.masked_invalid(z)
    ax.set_xlabel(direction_labels(result)[0])
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    if x.size > 1:
        ax.set_xlim(x[0], x[-1])  # the whole line, also where only part of it is finite
    _note_non_finite(ax, result)
    if z.count() == 0:
        _say_empty(ax)
        return fig
    ax.plot(x, z, "-", color="tab:blue", label="loss")
    if log_scale:
        ax.set_yscale("log")
    if show_trajectory and (t := _trajectory(result)) is not None and result.trajectory_loss is not None:
        zt = np.ma.masked_invalid(np.asarray(result.trajectory_loss, float))
        if log_scale:
            zt = np.ma.masked_where(zt.filled(np.nan) <= 0, zt.filled(np.nan))
        ax.plot(t[:, 0], zt, ".", color="tab:red", label="trajectory")
        ax.plot(t[0, 0], zt[0], "o", color="white", mec="k", ms=8, label="start")
        ax.plot(t[-1, 0], zt[-1], "*", color="gold", mec="k", ms=14, label="end")
    handles, names = ax.get_legend_handles_labels()
    acc = np.ma.masked_invalid(np.asarray(result.accuracy, float))
    if show_accuracy and acc.count() > 0:
        ax2 = ax.twinx()
        (h,) = ax2.plot(x, acc, "--", color="tab:green", label="accuracy")
        ax2.set_ylabel("accuracy")
        handles, names = handles + [h], names + ["accuracy"]
    ax.legend(handles, names, loc="best", fontsize="small")
    return fig

