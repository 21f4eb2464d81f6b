"""HDF5 round trip, VTK export and plots of landscapes with holes."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from matplotlib.figure import Figure

from gradvis_steps.core.grid import Grid, LandscapeResult
from gradvis_steps.render.figures import save_figure
from gradvis_steps.render.landscape_plots import (
    contour_levels,
    direction_labels,
    plot_contour,
    plot_line,
    plot_surface,
)
from gradvis_steps.storage.landscape import export_vtk, load_landscape, save_landscape


def _result(nx: int = 9, ny: int = 7, holes: bool = True, **kw) -> LandscapeResult:
    x = np.linspace(-1, 2, nx)
    y = np.linspace(-0.5, 1, ny)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = 1.0 + X**2 + 3 * Y**2
    acc = 1 / loss
    if holes:
        loss[0, 0] = np.nan
        loss[1, 2] = np.inf
        loss[3, 3] = -np.inf
    n = 5
    t = np.linspace(0, 1, n)
    traj = np.stack([1.5 * (1 - t), 0.8 * (1 - t) ** 2], axis=1)
    defaults = dict(
        axes=(x, y),
        loss=loss,
        accuracy=acc,
        trajectory=traj,
        residuals=np.linspace(0.1, 0, n),
        trajectory_loss=1 + traj[:, 0] ** 2 + 3 * traj[:, 1] ** 2,
        trajectory_accuracy=np.full(n, 0.5),
        checkpoint_loss=np.linspace(3, 1, n),
        checkpoint_accuracy=np.linspace(0.1, 0.9, n),
        iterations=np.arange(n) * 100,
        method="pca",
        normalization="filter",
        explained_variance=np.array([2.0, 0.5]),
        explained_variance_ratio=np.array([0.623, 0.2]),
        config={"grid": {"n": 50, "border": 0.4}},
        provenance={"trajectory": "traj.h5", "seed": 1},
    )
    defaults.update(kw)
    return LandscapeResult(**defaults)


def test_hdf5_round_trip(tmp_path):
    res = _result()
    res.filled[2, 2] = False
    path = tmp_path / "sub" / "landscape.h5"
    save_landscape(res, path)
    assert os.listdir(path.parent) == ["landscape.h5"]  # no temporary file left behind
    back = load_landscape(path)
    for name in (
        "loss",
        "accuracy",
        "filled",
        "trajectory",
        "residuals",
        "trajectory_loss",
        "trajectory_accuracy",
        "checkpoint_loss",
        "checkpoint_accuracy",
        "iterations",
        "explained_variance",
        "explained_variance_ratio",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name), err_msg=name)
    for a, b in zip(back.axes, res.axes, strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.eigenvalues is None
    assert (back.method, back.normalization, back.labels) == ("pca", "filter", ())
    assert back.config == res.config and back.provenance == res.provenance
    # readable with plain h5py
    with h5py.File(path) as f:
        assert f["loss"].shape == (9, 7) and f.attrs["indexing"] == "ij"
        assert f["trajectory/coefficients"].shape == (5, 2)
    # overwrite with a 1D eigenvector landscape (no trajectory)
    line = LandscapeResult(
        axes=(np.linspace(-1, 1, 5),),
        loss=np.arange(5.0),
        method="eigenvector",
        eigenvalues=np.array([12.3]),
        labels=("top eigenvector",),
    )
    save_landscape(line, path)
    back = load_landscape(path)
    assert back.ndim == 1 and back.trajectory is None and back.labels == ("top eigenvector",)
    np.testing.assert_array_equal(back.eigenvalues, [12.3])
    # resume from a saved file: values() gives the flat grid values with the filled mask
    assert back.values().filled.all()


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "l.h5"
    save_landscape(_result(), path)
    circular: dict = {}
    circular["self"] = circular  # json.dumps fails inside the write, after the temporary file exists
    with pytest.raises(ValueError):
        save_landscape(_result(provenance=circular, method="random"), path)
    assert sorted(os.listdir(tmp_path)) == ["l.h5"]  # temporary file removed
    assert load_landscape(path).method == "pca"  # old file intact
    # a 3-axis grid can be stored, 4 axes cannot
    cube = LandscapeResult(axes=(np.arange(3.0), np.arange(2.0), np.arange(2.0)), loss=np.zeros(12))
    save_landscape(cube, path)
    assert load_landscape(path).shape == (3, 2, 2)
    with pytest.raises(ValueError):
        save_landscape(LandscapeResult(axes=tuple(np.arange(2.0) for _ in range(4)), loss=np.zeros(16)), path)


def test_vtk_export_parses(tmp_path):
    res = _result()
    path = tmp_path / "surface.vtk"
    export_vtk(res, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# vtk DataFile Version 3.0"
    assert lines[2] == "ASCII" and lines[3] == "DATASET STRUCTURED_GRID"
    assert lines[4] == "DIMENSIONS 9 7 1"
    npts = 9 * 7
    assert lines[5] == f"POINTS {npts} double"
    pts = np.array([list(map(float, s.split())) for s in lines[6 : 6 + npts]])
    assert pts.shape == (npts, 3)
    # x varies fastest; point (i, j) = i + nx * j
    np.testing.assert_allclose(pts[:9, 0], res.axes[0])
    np.testing.assert_allclose(pts[::9, 1], res.axes[1])
    i, j = 4, 5
    np.testing.assert_allclose(pts[i + 9 * j, 2], res.loss[i, j])
    assert lines[6 + npts] == f"POINT_DATA {npts}"
    k = 6 + npts + 1
    assert lines[k].startswith("SCALARS loss") and lines[k + 1] == "LOOKUP_TABLE default"
    scal = np.array(lines[k + 2 : k + 2 + npts], dtype=float)
    fill = np.nanmax(res.loss[np.isfinite(res.loss)])
    assert scal[0] == pytest.approx(fill)  # NaN at (0, 0) -> documented fill value: largest finite loss
    assert np.all(np.isfinite(scal))
    k += 2 + npts
    assert lines[k] == "SCALARS valid int 1" and lines[k + 1] == "LOOKUP_TABLE default"
    valid = np.array(lines[k + 2 : k + 2 + npts], dtype=int)
    assert valid.sum() == npts - 3 and valid[0] == 0 and valid[1 + 9 * 2] == 0
    assert len(lines) == k + 2 + npts
    with pytest.raises(ValueError):
        export_vtk(LandscapeResult(axes=(np.arange(3.0),), loss=np.zeros(3)), tmp_path / "x.vtk")


@pytest.mark.parametrize("log", [False, True])
def test_plots_with_nan_and_inf(tmp_path, log):
    res = _result()
    for fn, kw in ((plot_contour, {"log_levels": log}), (plot_surface, {"log_z": log})):
        fig = fn(res, **kw)
        assert isinstance(fig, Figure)
        out = tmp_path / f"{fn.__name__}_{log}.png"
        save_figure(fig, out)
        assert out.stat().st_size > 1000
    fig = plot_contour(res)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PCA 1 (62.3% var)" and ax.get_ylabel() == "PCA 2 (20.0% var)"
    assert any(a.get_ylabel() == "loss" for a in fig.axes[1:])  # colorbar
    assert [h.get_label() for h in ax.get_legend().legend_handles] == ["trajectory", "start", "end"]
    # an interpolation plane marks the second minimum where it lies in plane coordinates
    ax = plot_contour(res, marks=[(0.5, -0.25, "minimum B")]).axes[0]
    assert [h.get_label() for h in ax.get_legend().legend_handles][-1] == "minimum B"
    mark = [line for line in ax.get_lines() if line.get_label() == "minimum B"][0]
    assert list(mark.get_xdata()) == [0.5] and list(mark.get_ydata()) == [-0.25]


def test_all_nan_and_degenerate_grids(tmp_path):
    res = _result(loss=np.full((9, 7), np.nan), accuracy=None)
    for fn in (plot_contour, plot_surface):
        fig = fn(res)
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert "no finite loss values" in texts
        save_figure(fig, tmp_path / f"{fn.__name__}.png")
    # one finite value, constant field, 1-point axis
    one = np.full((9, 7), np.nan)
    one[4, 4] = 2.0
    save_figure(plot_contour(_result(loss=one)), tmp_path / "one.png")
    save_figure(plot_contour(_result(loss=np.ones((9, 7)), holes=False)), tmp_path / "const.png")
    save_figure(plot_contour(_result(loss=np.ones((9, 7)) * 0.0), log_levels=True), tmp_path / "zeros.png")
    save_figure(plot_surface(_result(loss=np.ones((9, 7)))), tmp_path / "const3d.png")
    assert contour_levels(np.array([np.nan, np.inf])) is None


def test_line_plot_and_composition(tmp_path):
    x = np.linspace(-1, 1, 21)
    loss = 1 + x**2
    loss[3] = np.nan
    loss[5] = np.inf
    res = LandscapeResult(
        axes=(x,),
        loss=loss,
        accuracy=1 / (1 + x**2),
        trajectory=np.array([0.8, 0.4, 0.0]),
        trajectory_loss=np.array([1.64, 1.16, 1.0]),
        method="eigenvector",
        eigenvalues=np.array([12.34]),
    )
    fig = plot_line(res, log_scale=True)
    assert fig.axes[0].get_xlabel() == "eigenvector 1 (λ=12.3)"
    save_figure(fig, tmp_path / "line.png")
    empty = LandscapeResult(axes=(x,), loss=np.full(21, np.nan))
    save_figure(plot_line(empty), tmp_path / "empty_line.png")
    # compose beside another panel on a caller's figure
    fig = Figure(figsize=(12, 5))
    ax1 = fig.add_subplot(1, 3, 1)
    ax2 = fig.add_subplot(1, 3, 2, projection="3d")
    ax3 = fig.add_subplot(1, 3, 3)
    ax3.plot([0, 1], [1, 0])  # e.g. a spectrum
    assert plot_contour(_result(), ax=ax1) is fig
    assert plot_surface(_result(), ax=ax2) is fig
    save_figure(fig, tmp_path / "composed.png")
    with pytest.raises(ValueError):
        plot_surface(_result(), ax=ax1)
    with pytest.raises(ValueError):
        plot_line(_result())


def test_direction_labels_fallbacks():
    res = LandscapeResult(axes=(np.arange(2.0), np.arange(2.0)), loss=np.zeros((2, 2)), method="random")
    assert direction_labels(res) == ["random direction 1", "random direction 2"]
    res = LandscapeResult(axes=(np.arange(2.0), np.arange(2.0)), loss=np.zeros((2, 2)), labels=("a", "b"))
    assert direction_labels(res) == ["a", "b"]
    g = Grid.from_ranges([(0, 1), (0, 1)], 3)
    assert g.n_points == 9
