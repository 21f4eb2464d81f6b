"""One level rule for the interpolation plane (issue 25 item 7): the video frame's plane panel has the levels of
``plane_contour.png``, log-spaced over a loss that spans 0.08 to 54, so it shows the valley instead of one colour.

Synthetic plane and line (no training): the truth is ``numpy.geomspace(min, max, 30)`` of the plane's loss, and the
standalone figure is made by the plot_landscape step exactly as the workflow's ``plot_interpolation_plane`` rule
calls it."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from gradvis_steps import plot_landscape
from gradvis_steps.core.grid import LandscapeResult
from gradvis_steps.render import figures
from gradvis_steps.render.frames import InterpolationFrames
from gradvis_steps.render.landscape_plots import landscape_levels, plot_contour, uses_log_levels
from gradvis_steps.storage.landscape import save_landscape
from gradvis_steps.storage.spectra import CheckpointSpectrum, Spectra

LOW, HIGH = 0.08, 54.0


def _plane() -> LandscapeResult:
    """The interpolation plane's shape of loss: low along the segment between the minima (0, 0) and (1, 0), rising
    geometrically with the distance from it, from exactly 0.08 to exactly 54 (linear levels leave most of the plane
    in the lowest one)."""
    x = np.linspace(-0.4, 1.4, 19)
    y = np.linspace(-0.4, 1.4, 19)
    X, Y = np.meshgrid(x, y, indexing="ij")
    r = np.hypot(X - np.clip(X, 0.0, 1.0), Y)  # distance from the segment
    loss = LOW * (HIGH / LOW) ** ((r / r.max()) ** 1.5)
    return LandscapeResult(axes=(x, y), loss=loss, method="interpolation", labels=("A -> B", "A -> init A"))


def _line_and_spectra() -> tuple[LandscapeResult, Spectra]:
    ts = np.linspace(0.0, 1.0, 3)
    line = LandscapeResult(axes=(ts,), loss=np.array([0.08, 2.0, 0.09]), method="interpolation")
    rng = np.random.default_rng(0)
    entries = {}
    for key in range(len(ts)):
        nodes = np.sort(rng.normal(size=(2, 4)), axis=1)
        summary = {"lambda_max": float(nodes.max()), "lambda_min": float(nodes.min()), "negative_mass": 0.1}
        entries[key] = CheckpointSpectrum(key, nodes, np.full((2, 4), 0.25), np.zeros(2), np.zeros(1), np.zeros(1),
                                          summary)
    return line, Spectra(entries)


def _filled_levels(ax: Axes) -> np.ndarray:
    (filled,) = [c for c in ax.collections if isinstance(c, ContourSet) and c.filled]
    return np.asarray(filled.levels)


def _standalone_levels(tmp_path, monkeypatch, *flags: str) -> np.ndarray:
    """The levels of ``plane_contour.png`` as the plot_landscape step draws it (the figure caught before saving)."""
    path = tmp_path / "plane.h5"
    save_landscape(_plane(), path)
    saved: dict[str, Figure] = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out, **_: saved.__setitem__(str(out), fig))
    contour = tmp_path / "plane_contour.png"
    assert plot_landscape.main(["--landscape", str(path), "--contour", str(contour), *flags]) == 0
    (ax, *_) = saved[str(contour)].axes
    return _filled_levels(ax)


def test_the_rule_is_log_levels_for_the_interpolation_plane_only():
    plane = _plane()
    assert uses_log_levels(plane) and not uses_log_levels(plane, False) and uses_log_levels(plane, True)
    other = LandscapeResult(axes=plane.axes, loss=plane.loss, method="pca")
    assert not uses_log_levels(other) and uses_log_levels(other, True)
    line, _ = _line_and_spectra()
    assert not uses_log_levels(line)  # a line's loss axis keeps its own --log-levels flag
    np.testing.assert_allclose(landscape_levels(plane), np.geomspace(LOW, HIGH, 30), rtol=1e-12)
    np.testing.assert_allclose(landscape_levels(other), np.linspace(LOW, HIGH, 30), rtol=1e-12)


@pytest.mark.parametrize("flags", [["--log-levels", "--mark", "1", "0", "minimum B"], []],
                         ids=["as-the-workflow-rule", "no-flag"])
def test_the_frame_plane_panel_has_the_levels_of_plane_contour(flags, tmp_path, monkeypatch):
    standalone = _standalone_levels(tmp_path, monkeypatch, *flags)
    line, spectra = _line_and_spectra()
    sequence = InterpolationFrames(line, spectra, plane=_plane(), dpi=30)  # the frames step's default: no flag
    panel = _filled_levels(sequence.figure.axes[0])
    np.testing.assert_array_equal(panel, standalone)
    np.testing.assert_allclose(panel, np.geomspace(LOW, HIGH, 30), rtol=1e-12)  # log-spaced over 0.08..54


def _panel_colours(ax: Axes, image: np.ndarray) -> tuple[int, float]:
    """Colours inside ``ax`` (its frame and ticks left out) of its figure rendered as ``image``: how many colours
    cover at least 0.5 % of the panel each, and the share of the most common one."""
    x0, y0, x1, y1 = np.round(ax.get_window_extent().extents).astype(int)
    height = image.shape[0]
    inside = image[height - y1 + 3:height - y0 - 3, x0 + 3:x1 - 3, :3].reshape(-1, 3)
    _, counts = np.unique(inside, axis=0, return_counts=True)
    shares = counts / len(inside)
    return int(np.count_nonzero(shares >= 0.005)), float(shares.max())


def test_the_frame_plane_panel_is_not_one_flat_colour():
    line, spectra = _line_and_spectra()
    sequence = InterpolationFrames(line, spectra, plane=_plane(), dpi=60)
    _, image = next(iter(sequence))
    colours, largest = _panel_colours(sequence.figure.axes[0], image)
    # the same panel with linear levels (the frames before the fix): most of it one colour
    linear = Figure(figsize=sequence.figure.get_size_inches(), dpi=60)
    ax = linear.add_axes(sequence.figure.axes[0].get_position().bounds)
    plot_contour(_plane(), ax, log_levels=False, show_trajectory=False, colorbar=False)
    canvas = FigureCanvasAgg(linear)
    canvas.draw()
    _, flat_largest = _panel_colours(ax, np.asarray(canvas.buffer_rgba()))
    assert flat_largest > 0.5  # the failure the rule fixes, reproduced
    assert colours >= 15 and largest < 0.2, (colours, largest)
