"""What every figure of the package shares: a new axes when the caller gives none, and an atomic save.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot: they render with the Agg canvas, need no
screen, leave the user's pyplot backend untouched and never pile up in pyplot's global registry in long runs.
"""

from __future__ import annotations

import os

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..storage.atomic import atomic_path

__all__ = ["new_axes", "save_figure"]


def new_axes(ax: Axes | None, projection: str | None = None, figsize: tuple[float, float] = (6, 5)) -> Axes:
    """``ax`` itself, or the axes of a new one-panel figure of ``figsize`` (``projection="3d"``: a 3D axes; a given
    ``ax`` must then be 3D, else a ValueError)."""
    if ax is not None:
        if projection == "3d" and getattr(ax, "name", "") != "3d":
            raise ValueError("plot_surface needs a 3D axes (fig.add_subplot(..., projection='3d'))")
        return ax
    fig = Figure(figsize=figsize)  # not pyplot: no global figure registry to leak in long runs
    return fig.add_subplot(1, 1, 1, projection=projection)


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150, close: bool = True,
                metadata: dict[str, str] | None = None) -> None:
    """Write ``fig`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``); ``metadata``:
    text chunks stored in the file (PNG tEXt), e.g. how a density was smoothed."""
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    try:
        with atomic_path(path, "." + ext) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight", metadata=metadata)
    finally:
        if close and fig.canvas.manager is not None:  # a pyplot figure: drop it from pyplot's registry
            import matplotlib.pyplot as plt

            plt.close(fig)
