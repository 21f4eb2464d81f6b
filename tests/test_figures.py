"""The paper's figures in full (issue 19): training frames like Figure 1 (3D surface | contour | density), moving
frames over landscapes centred at different checkpoints, interpolation frames like Figure 8 (plane | line |
density), one density width rule for every step, per-checkpoint density plots, and real mp4 videos.

Built from real tiny runs (LeNet of widths 3, 4, 16, 12 on the digits, one epoch of batch 128: 13 checkpoints,
two seeds). Truths used: the landscape files' own trajectory coefficients (read with h5py), the plane's loss on
its grid points against the interpolation line's loss at the same parameters, the Gaussian density written out
by hand in numpy, ffprobe on the videos."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D
from PIL import Image
from step_helpers import fails, step, train_tiny

from gradvis_steps import directions, frames, interpolate, landscape, plot_spectra, spectrum, video
from gradvis_steps.core.slq import SIGMA_REL, resolve_sigma
from gradvis_steps.render.frames import (
    InterpolationFrames,
    TrainingFrames,
    centre_of,
    landscape_for,
    line_to_plane,
)
from gradvis_steps.render.video import count_frames
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra

EVAL = ["--eval-fraction", "0.05", "--no-progress"]
SLQ = ["--k", "3", "--m", "8", "--dtype", "float64", *EVAL]
SPECTRUM_ITERATIONS = [0, 3, 6, 9, 12]


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


def hand_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Eq. 4-8 written out: mean over starting vectors of sum_j w_ij N(t; l_ij, sigma^2)."""
    z = (grid[:, None, None] - nodes[None]) / sigma
    return (weights[None] * np.exp(-0.5 * z * z)).sum(axis=(1, 2)) / (nodes.shape[0] * sigma * np.sqrt(2 * np.pi))


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("figures")


@pytest.fixture(scope="module")
def run_a(folder) -> Path:
    return train_tiny(folder / "trajectory_s1.h5", 1)


@pytest.fixture(scope="module")
def run_b(folder) -> Path:
    return train_tiny(folder / "trajectory_s2.h5", 2)


@pytest.fixture(scope="module")
def landscapes(folder, run_a) -> dict[int, Path]:
    """PCA landscapes of run A centred at iterations 4 and 12 (the last), resolution 5."""
    out = {}
    for centre in (4, 12):
        dirs = folder / f"pca_c{centre}.h5"
        step(directions, "--trajectory", run_a, "--method", "pca", "--center-iteration", centre, "--out", dirs)
        out[centre] = folder / f"landscape_c{centre}.h5"
        step(landscape, "--trajectory", run_a, "--directions", dirs, "--resolution", 5, "--out", out[centre], *EVAL)
    return out


@pytest.fixture(scope="module")
def spectra_file(folder, run_a) -> Path:
    path = folder / "spectra.h5"
    step(spectrum, "--trajectory", run_a, "--iterations", *SPECTRUM_ITERATIONS, "--out", path, *SLQ)
    return path


@pytest.fixture(scope="module")
def spectra_sigma(folder, run_a) -> Path:
    path = folder / "spectra_sigma.h5"
    step(spectrum, "--trajectory", run_a, "--iterations", 0, 12, "--sigma", 0.05, "--out", path, *SLQ)
    return path


@pytest.fixture(scope="module")
def pair(folder, run_a, run_b) -> dict[str, Path]:
    """The interpolation line A -> B (5 points, t = 0, 1/4, ..., 1) with spectra, and the plane through both minima
    and A's initial point on a grid (step 1/4 over [-1/2, 3/2]^2) that holds every (t, 0) exactly."""
    dirs, plane, line, spectra = (folder / name for name in ("interp.h5", "plane.h5", "line.h5", "line_spectra.h5"))
    step(directions, "--trajectory", run_a, "--trajectory-b", run_b, "--method", "interpolation", "--out", dirs)
    step(landscape, "--trajectory", run_a, "--directions", dirs, "--range", -0.5, 1.5, -0.5, 1.5, "--resolution", 9,
         "--out", plane, *EVAL)
    step(interpolate, "--trajectory-a", run_a, "--trajectory-b", run_b, "--points", 5, "--out-line", line,
         "--out-spectra", spectra, *SLQ)
    return {"plane": plane, "line": line, "spectra": spectra}


# ------------------------------------------------------------------------------------------ training frames
def test_training_frames_three_panels_one_3d(landscapes, spectra_file):
    sequence = TrainingFrames([load_landscape(landscapes[12])], load_spectra(spectra_file), dpi=40)
    fig = sequence.figure
    panels = [ax for ax in fig.axes if ax is not sequence.cax]  # the contour's colorbar is not a panel
    assert len(panels) == 3
    assert [isinstance(ax, Axes3D) for ax in panels] == [True, False, False]
    images = [image for _, image in sequence]
    assert len(images) == len(SPECTRUM_ITERATIONS)
    assert {image.shape for image in images} == {(200, 640, 4)}  # 16 x 5 inches at 40 dpi, every frame alike
    assert not np.array_equal(images[0], images[-1])  # the moving parts moved


def test_training_frames_step_writes_every_checkpoint(folder, landscapes, spectra_file):
    out = folder / "frames_training"
    step(frames, "training", "--landscape", landscapes[12], "--spectra", spectra_file, "--out-dir", out, "--dpi", 40)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(len(SPECTRUM_ITERATIONS))] + ["frames.json"]
    record = json.loads((out / "frames.json").read_text())
    assert record["keys"] == SPECTRUM_ITERATIONS and record["centres"] == [12]
    assert not list(folder.glob(".frames_training*"))  # the staging folder was renamed, nothing left behind


def test_current_point_is_the_checkpoints_projection(landscapes, spectra_file):
    """The point drawn at iteration t is that checkpoint's coefficients in the landscape file (read with h5py),
    on the contour and on the surface at its projected loss."""
    with h5py.File(landscapes[12]) as f:
        coefficients = f["trajectory/coefficients"][()]
        projected_loss = f["trajectory/projected_loss"][()]
        iterations = f["trajectory/iterations"][()].tolist()
    sequence = TrainingFrames([load_landscape(landscapes[12])], load_spectra(spectra_file), dpi=30)
    for key, _ in sequence:
        row = iterations.index(key)
        np.testing.assert_array_equal(np.ravel(sequence.point2d.get_data()), coefficients[row])
        xs, ys, zs = sequence.point3d.get_data_3d()
        np.testing.assert_array_equal([xs[0], ys[0], zs[0]], [*coefficients[row], projected_loss[row]])
        assert len(sequence.path2d.get_xdata()) == row + 1  # the trajectory so far


# ---------------------------------------------------------------------------------------------- moving frame
def test_landscape_selection_rule():
    centres = [0, 4, 12]
    picks = {t: landscape_for(centres, t) for t in (0, 3, 4, 11, 12, 500)}
    assert picks == {0: 0, 3: 0, 4: 1, 11: 1, 12: 2, 500: 2}
    assert [landscape_for([4, 8], t) for t in (0, 3, 4, 8)] == [0, 0, 0, 1]  # before every centre: the first
    with pytest.raises(ValueError, match=r"distinct and ascending, got \[4, 4\]"):
        landscape_for([4, 4], 5)


def test_center_iteration_stored_and_old_files_read_as_last(folder, landscapes):
    assert load_landscape(landscapes[4]).center_iteration == 4
    assert load_landscape(landscapes[12]).center_iteration == 12
    old = folder / "landscape_old.h5"
    shutil.copy(landscapes[4], old)
    with h5py.File(old, "a") as f:
        del f.attrs["center_iteration"]  # as written before the attribute existed
    result = load_landscape(old)
    assert result.center_iteration is None and centre_of(result) == 12  # "the last checkpoint"


def test_moving_frames_switch_landscape_at_each_centre(folder, landscapes, spectra_file):
    out = folder / "frames_moving"
    # given out of order: the rule works on the centres, the record names each file by its position on the CLI
    step(frames, "training", "--landscape", landscapes[12], landscapes[4], "--spectra", spectra_file,
         "--out-dir", out, "--dpi", 30)
    record = json.loads((out / "frames.json").read_text())
    assert record["centres"] == [12, 4]
    # iterations 0, 3 (before every centre) and 6, 9 on the one centred at 4; 12 on the one centred at 12
    assert record["landscape_of_frame"] == [1, 1, 1, 1, 0]
    assert len(list(out.glob("frame_*.png"))) == 5
    sequence = TrainingFrames([load_landscape(landscapes[p]) for p in (4, 12)], load_spectra(spectra_file), dpi=30)
    with h5py.File(landscapes[4]) as f:
        coefficients_c4 = f["trajectory/coefficients"][()]
    for key, _ in sequence:
        if key == 9:  # drawn in the coordinates of the landscape centred at 4
            np.testing.assert_array_equal(np.ravel(sequence.point2d.get_data()), coefficients_c4[9])
    with pytest.raises(ValueError, match="same iteration: centres"):
        TrainingFrames([load_landscape(landscapes[4])] * 2, load_spectra(spectra_file))


# ----------------------------------------------------------------------------------------- interpolation
def test_line_maps_onto_the_plane(pair, run_a):
    """theta(t) = (1-t) A + t B sits at (t, 0) of the plane: the plane's loss at its grid points (t, 0) equals the
    line's loss at t (the same parameters, evaluated by another step), and the projected trajectory of A puts its
    final checkpoint at (0, 0) and its initial point at (0, 1)."""
    plane, line = load_landscape(pair["plane"]), load_landscape(pair["line"])
    ts = line.axes[0]
    xy = line_to_plane(ts, plane)
    np.testing.assert_array_equal(xy, np.column_stack([ts, np.zeros_like(ts)]))
    x, y = plane.axes
    cols = [int(np.flatnonzero(np.isclose(x, px))[0]) for px in xy[:, 0]]
    row0 = int(np.flatnonzero(np.isclose(y, 0.0))[0])
    np.testing.assert_allclose(plane.loss[cols, row0], line.loss, rtol=1e-4)
    assert np.ptp(line.loss) > 1e-2  # a line that actually changes: the match is not trivial
    np.testing.assert_allclose(plane.trajectory[-1], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(plane.trajectory[0], [0.0, 1.0], atol=1e-5)


def test_line_to_plane_rejects_other_planes(pair, landscapes):
    with pytest.raises(ValueError, match="along 'pca' directions"):
        line_to_plane([0.5], load_landscape(landscapes[12]))
    plane = load_landscape(pair["plane"])
    moved = dataclasses.replace(plane, center_iteration=5)
    with pytest.raises(ValueError, match=r"centred at iteration 5, not at run A's final checkpoint \(iteration 12\)"):
        line_to_plane([0.5], moved)


def test_interpolation_frames_with_plane(folder, pair):
    line, spectra = load_landscape(pair["line"]), load_spectra(pair["spectra"])
    sequence = InterpolationFrames(line, spectra, plane=load_landscape(pair["plane"]), dpi=30)
    panels = [ax for ax in sequence.figure.axes if ax is not sequence.cax]
    assert len(panels) == 3 and not any(isinstance(ax, Axes3D) for ax in panels)
    for key, _ in sequence:
        np.testing.assert_array_equal(np.ravel(sequence.plane_point.get_data()), [line.axes[0][key], 0.0])
    plain = InterpolationFrames(line, spectra, dpi=30)  # without --plane: line | density as before
    assert len(plain.figure.axes) == 2
    out = folder / "frames_interp"
    step(frames, "interpolation", "--line", pair["line"], "--plane", pair["plane"], "--spectra", pair["spectra"],
         "--out-dir", out, "--dpi", 30)
    assert len(list(out.glob("frame_*.png"))) == 5


# ------------------------------------------------------------------------------------------------- sigma
def test_explicit_sigma_is_the_same_in_spectra_frames_and_plots(folder, landscapes, spectra_sigma):
    spectra = load_spectra(spectra_sigma)
    assert spectra.attrs["sigma_rule"] == "explicit --sigma 0.05"
    for entry in spectra.entries.values():
        assert entry.sigma == 0.05
        np.testing.assert_allclose(entry.density, hand_density(entry.nodes, entry.weights, entry.grid, 0.05),
                                   rtol=1e-10, atol=1e-12)
    out = folder / "frames_sigma"
    step(frames, "training", "--landscape", landscapes[12], "--spectra", spectra_sigma, "--sigma", 0.05,
         "--out-dir", out, "--dpi", 30)
    record = json.loads((out / "frames.json").read_text())
    assert record["sigma"] == 0.05 and record["sigma_rule"] == "explicit"
    assert float(png_text(out / "frame_000000.png")["gradvis:sigma"]) == 0.05
    plots = folder / "densities_sigma"
    step(plot_spectra, "--spectra", spectra_sigma, "--out-dir", plots, "--sigma", 0.05, "--dpi", 30)
    assert float(png_text(plots / "density_000012.png")["gradvis:sigma"]) == 0.05
    # the frames' curve is the stored density's function: same width, so equal on the stored grid
    sequence = TrainingFrames([load_landscape(landscapes[12])], spectra, sigma=0.05)
    entry = spectra.entries[12]
    np.testing.assert_allclose(np.interp(entry.grid, sequence.density.grid, sequence.density.densities[12]),
                               entry.density, rtol=2e-3, atol=1e-6 * entry.density.max())


def test_automatic_sigma_over_the_points_shown_together(spectra_file, landscapes):
    spectra = load_spectra(spectra_file)
    every = np.concatenate([e.nodes.ravel() for e in spectra.entries.values()])
    assert SIGMA_REL == 1 / 500
    for entry in spectra.entries.values():  # a stored density shows its own point
        assert entry.sigma == pytest.approx((entry.nodes.max() - entry.nodes.min()) / 500, rel=1e-12)
    sequence = TrainingFrames([load_landscape(landscapes[12])], spectra, dpi=30)
    assert sequence.density.sigma == pytest.approx((every.max() - every.min()) / 500, rel=1e-12)
    assert sequence.density.rule == "range/500 over the 5 point(s) shown together"
    assert resolve_sigma(list(e.nodes for e in spectra.entries.values()))[0] == sequence.density.sigma


def test_bad_sigma_is_named(folder, landscapes, spectra_file, capsys):
    for value in ("0", "-1", "nan"):
        argv = ["training", "--landscape", landscapes[12], "--spectra", spectra_file, "--out-dir", folder / "x",
                "--sigma", value]
        assert f"--sigma must be > 0, got {float(value)}" in fails(frames, argv, capsys)
        argv = ["--spectra", spectra_file, "--out-dir", folder / "x", "--sigma", value]
        assert f"--sigma must be > 0, got {float(value)}" in fails(plot_spectra, argv, capsys)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0, got -2"):
        resolve_sigma(np.zeros(3), -2)


# ------------------------------------------------------------------------------------------- plot_spectra
def test_plot_spectra_writes_one_png_per_checkpoint(folder, spectra_file):
    out = folder / "densities"
    step(plot_spectra, "--spectra", spectra_file, "--out-dir", out, "--no-log-scale", "--dpi", 30)
    assert sorted(p.name for p in out.iterdir()) == [f"density_{i:06d}.png" for i in SPECTRUM_ITERATIONS]
    assert not list(folder.glob(".densities*"))
    sizes = set()
    for path in out.iterdir():
        with Image.open(path) as image:
            sizes.add(image.size)
        assert "range/500 over the 5 point(s)" in png_text(path)["gradvis:sigma_rule"]
    assert len(sizes) == 1


# ------------------------------------------------------------------------------------------------ videos
def _codec(path: Path) -> str:
    result = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name",
                             "-of", "json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)["streams"][0]["codec_name"]


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_videos_from_training_and_interpolation_frames(folder, landscapes, spectra_file, pair):
    training, interp = folder / "v_training", folder / "v_interp"
    step(frames, "training", "--landscape", landscapes[4], landscapes[12], "--spectra", spectra_file,
         "--out-dir", training, "--dpi", 30)
    step(frames, "interpolation", "--line", pair["line"], "--plane", pair["plane"], "--spectra", pair["spectra"],
         "--out-dir", interp, "--dpi", 30)
    for frames_dir, count in ((training, len(SPECTRUM_ITERATIONS)), (interp, 5)):
        movie = frames_dir.with_suffix(".mp4")
        step(video, "--frames", frames_dir, "--fps", 4, "--out", movie)
        assert count_frames(movie) == count and _codec(movie) == "h264"


def test_figure_type_is_a_plain_figure(landscapes, spectra_file):
    """Frames never go through pyplot (no global figure registry to leak across hundreds of frames)."""
    sequence = TrainingFrames([load_landscape(landscapes[12])], load_spectra(spectra_file), dpi=30)
    assert type(sequence.figure) is Figure and sequence.figure.canvas.manager is None
