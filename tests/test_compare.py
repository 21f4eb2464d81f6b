"""The compare step on synthetic spectra and landscape files: densities against a dense sum of Gaussians
(scipy), the table against the stored summaries, shared contour levels against the union of the losses."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.contour import ContourSet
from matplotlib.image import imread
from scipy.stats import norm

from gradvis_steps import cli, compare
from gradvis_steps.core.grid import LandscapeResult
from gradvis_steps.render.spectrum_plots import LOG_FLOOR
from gradvis_steps.storage import runs
from gradvis_steps.storage.landscape import save_landscape
from gradvis_steps.storage.spectra import CheckpointSpectrum, Spectra, load_spectra, save_spectra

RUN = [runs.identity({"dataset": {"name": "synthetic"}, "model": {"name": "none"}})]  # every file: one run's variant


def _entry(iteration: int, nodes: np.ndarray, weights: np.ndarray) -> CheckpointSpectrum:
    summary = {"lambda_max": float(nodes.max()), "lambda_min": float(nodes.min()),
               "negative_mass": float(weights[nodes < 0].sum() / nodes.shape[0])}
    return CheckpointSpectrum(iteration, nodes, weights, nodes[:, 0], np.zeros(3), np.zeros(3), summary)


def _spectra_file(path, iterations, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    entries = {}
    for it in iterations:
        nodes = np.sort(rng.normal(shift + it, 2.0, size=(3, 6)), axis=1)
        weights = rng.random((3, 6))
        weights /= weights.sum(axis=1, keepdims=True)
        entries[it] = _entry(it, nodes, weights)
    save_spectra(Spectra(entries, {"k": 3, "m": 6, "runs": RUN}), path)
    return path


def _dense_density(nodes, weights, grid, sigma):
    """eq. 5, 7, 8 term by term: (1/k) sum_ij w_ij N(t; l_ij, sigma^2)."""
    k = nodes.shape[0]
    pairs = zip(nodes.ravel(), weights.ravel(), strict=True)
    return sum(w * norm.pdf(grid, loc=node, scale=sigma) for node, w in pairs) / k


def fails(argv, capsys) -> str:
    capsys.readouterr()
    assert cli.run(compare.main, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_spectra_densities_and_table(tmp_path):
    a = _spectra_file(tmp_path / "a.h5", [0, 5, 10], shift=0.0, seed=1)
    b = _spectra_file(tmp_path / "b.h5", [0, 5], shift=3.0, seed=2)
    files = [load_spectra(a), load_spectra(b)]
    comparison = compare.compare_spectra(files, [str(a), str(b)], ["m=20", "m=30"])
    assert comparison.iteration == 5  # the last iteration both hold
    nodes = [f.entries[5].nodes for f in files]
    everything = np.concatenate([n.ravel() for n in nodes])
    assert comparison.sigma == pytest.approx((everything.max() - everything.min()) / 500, rel=1e-12)
    assert comparison.grid[0] <= everything.min() and comparison.grid[-1] >= everything.max()
    for f, density in zip(files, comparison.densities, strict=True):
        e = f.entries[5]
        np.testing.assert_allclose(density, _dense_density(e.nodes, e.weights, comparison.grid, comparison.sigma),
                                   rtol=1e-9, atol=1e-12)
    assert comparison.rows[1] == (files[1].entries[5].summary["lambda_max"],
                                  files[1].entries[5].summary["lambda_min"],
                                  files[1].entries[5].summary["negative_mass"])

    explicit = compare.compare_spectra(files, [str(a), str(b)], ["x", "y"], iteration=0, sigma=0.5)
    assert explicit.iteration == 0 and explicit.sigma == 0.5
    e = files[0].entries[0]
    np.testing.assert_allclose(explicit.densities[0], _dense_density(e.nodes, e.weights, explicit.grid, 0.5),
                               rtol=1e-9, atol=1e-12)

    fig = compare.spectra_figure(comparison, log_scale=True)
    density_ax, table_ax = fig.axes
    curves = [line for line in density_ax.get_lines() if line.get_label() in ("m=20", "m=30")]
    assert [c.get_label() for c in curves] == ["m=20", "m=30"]
    for curve, density in zip(curves, comparison.densities, strict=True):
        np.testing.assert_allclose(curve.get_ydata(), np.maximum(density, LOG_FLOOR))
    assert [t.get_text() for t in density_ax.get_legend().get_texts()] == ["m=20", "m=30"]
    cells = table_ax.tables[0].get_celld()
    texts = {(r, c): cell.get_text().get_text() for (r, c), cell in cells.items()}
    assert [texts[(0, c)] for c in range(3)] == ["λmax", "λmin", "negative mass"]
    assert texts[(2, -1)] == "m=30"
    assert texts[(2, 0)] == f"{files[1].entries[5].summary['lambda_max']:.4g}"
    assert texts[(1, 2)] == f"{files[0].entries[5].summary['negative_mass']:.4g}"


def test_spectra_main_and_errors(tmp_path, capsys):
    a = _spectra_file(tmp_path / "a.h5", [0, 5, 10], shift=0.0, seed=1)
    b = _spectra_file(tmp_path / "b.h5", [0, 5], shift=3.0, seed=2)
    c = _spectra_file(tmp_path / "c.h5", [7], shift=0.0, seed=3)
    out = tmp_path / "fig.png"
    assert compare.main(["--spectra", str(a), str(b), "--labels", "m=20", "m=30", "--out", str(out),
                         "--no-log-scale", "--dpi", "50"]) == 0
    assert imread(out).ndim == 3
    assert not list(tmp_path.glob(".fig.png*"))  # no temporary left beside it

    never = tmp_path / "never.png"
    err = fails(["--spectra", a, c, "--out", never], capsys)
    assert "no checkpoint iteration is common" in err and "a.h5" in err and "c.h5" in err
    err = fails(["--spectra", a, b, "--iteration", 10, "--out", never], capsys)
    assert "--iteration 10 is missing from" in err and "b.h5" in err and "a.h5" not in err
    err = fails(["--spectra", a, b, "--labels", "only one", "--out", never], capsys)
    assert "1 label(s) for 2 file(s)" in err
    err = fails(["--spectra", a, b, "--sigma", -1, "--out", never], capsys)
    assert "--sigma must be > 0, got -1" in err
    err = fails(["--spectra", a, tmp_path / "missing.h5", "--out", never], capsys)
    assert "missing.h5" in err and "does not exist" in err
    with pytest.raises(SystemExit):  # exactly one of --spectra / --landscapes
        compare.main(["--spectra", str(a), "--landscapes", str(b), "--out", str(never)])
    with pytest.raises(SystemExit):
        compare.main(["--out", str(never)])
    assert not never.exists()


def _landscape(path, offset: float, scale: float, ndim: int = 2):
    x = np.linspace(-1, 1, 7)
    y = np.linspace(-0.5, 0.5, 5)
    if ndim == 1:
        result = LandscapeResult(axes=(x,), loss=offset + scale * x**2, method="random", runs=RUN)
    else:
        X, Y = np.meshgrid(x, y, indexing="ij")
        result = LandscapeResult(axes=(x, y), loss=offset + scale * (X**2 + Y**2), method="pca",
                                 trajectory=np.array([[0.8, 0.4], [0.0, 0.0]]), runs=RUN)
    save_landscape(result, path)
    return result


def test_landscapes_share_levels(tmp_path, capsys):
    low = _landscape(tmp_path / "low.h5", 0.5, 1.0)
    high = _landscape(tmp_path / "high.h5", 2.0, 3.0)
    union = np.concatenate([low.loss.ravel(), high.loss.ravel()])
    fig = compare.landscapes_figure([low, high], ["low.h5", "high.h5"], ["seed 0", "seed 1"])
    panels = [ax for ax in fig.axes if ax.get_title() in ("seed 0", "seed 1")]
    assert [ax.get_title() for ax in panels] == ["seed 0", "seed 1"]
    for ax in panels:
        (filled, *_) = [c for c in ax.collections if isinstance(c, ContourSet)]
        np.testing.assert_allclose(filled.levels, np.linspace(union.min(), union.max(), 30), rtol=1e-12)
    assert sum(ax.get_ylabel() == "loss" for ax in fig.axes) == 1  # one colorbar for the shared scale

    out = tmp_path / "landscapes.png"
    assert compare.main(["--landscapes", str(tmp_path / "low.h5"), str(tmp_path / "high.h5"), "--labels", "a", "b",
                         "--out", str(out), "--log-scale", "--dpi", "50"]) == 0
    assert imread(out).ndim == 3

    line_a = _landscape(tmp_path / "line_a.h5", 0.5, 1.0, ndim=1)
    line_b = _landscape(tmp_path / "line_b.h5", 1.0, 2.0, ndim=1)
    fig = compare.landscapes_figure([line_a, line_b], ["line_a.h5", "line_b.h5"], ["A", "B"])
    (ax,) = fig.axes
    for line, result in zip(ax.get_lines(), (line_a, line_b), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), result.axes[0])
        np.testing.assert_array_equal(np.ma.filled(line.get_ydata(), np.nan), result.loss)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B"]

    never = tmp_path / "never.png"
    err = fails(["--landscapes", tmp_path / "low.h5", tmp_path / "line_a.h5", "--out", never], capsys)
    assert "all 1D or all 2D" in err and "low.h5 (2D)" in err and "line_a.h5 (1D)" in err
    err = fails(["--landscapes", tmp_path / "low.h5", "--iteration", 3, "--out", never], capsys)
    assert "--spectra only" in err
    assert not never.exists()


def test_plot_contour_levels_keyword():
    from gradvis_steps.render.landscape_plots import plot_contour

    x = np.linspace(-1, 1, 5)
    res = LandscapeResult(axes=(x, x), loss=np.add.outer(x**2, x**2))
    fig = plot_contour(res, levels=[0.0, 1.0, 5.0])
    (filled, *_) = [c for c in fig.axes[0].collections if isinstance(c, ContourSet)]
    np.testing.assert_array_equal(filled.levels, [0.0, 1.0, 5.0])
    with pytest.raises(ValueError, match=r"increasing numbers, got \[1.0, 0.0\]"):
        plot_contour(res, levels=[1.0, 0.0])
    with pytest.raises(ValueError, match="must be positive, got 0.0"):
        plot_contour(res, levels=[0.0, 1.0], log_levels=True)
