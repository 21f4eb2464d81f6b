"""Steps are functions: ``run(Settings(...))`` writes the same files as ``main([...])`` with the same settings, bit for
bit (every HDF5 dataset), and returns what it wrote; settings built in Python are checked as the command line is.

Tiny trajectories (LeNet of widths 3, 4, 16, 12 on the digits, one epoch of batch 128: 13 checkpoints)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from step_helpers import step, train_tiny

from gradvis_steps import directions, eigendirections, interpolate, landscape, spectrum, train
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra

EVAL = {"eval_fraction": 0.05, "device": "cpu", "no_progress": True}
EVAL_ARGV = ["--eval-fraction", "0.05", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("step_run")


@pytest.fixture(scope="module")
def trajectory(folder):
    return train_tiny(folder / "trajectory.h5", 0)


@pytest.fixture(scope="module")
def pca(folder, trajectory):
    path = folder / "pca.h5"
    step(directions, "--trajectory", trajectory, "--method", "pca", "--out", path)
    return path


def datasets(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """Every dataset of an HDF5 file: dtype, shape and raw bytes, by name."""
    found: dict[str, tuple[str, tuple, bytes]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            value = np.asarray(obj[()])
            found[name] = (str(value.dtype), value.shape, value.tobytes())

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def assert_same_datasets(a: Path, b: Path) -> None:
    left, right = datasets(a), datasets(b)
    assert left.keys() == right.keys() and left
    for name in left:
        assert left[name] == right[name], name


def test_directions_run_equals_main(folder, trajectory, pca):
    for method, extra_argv, extra in (("pca", [], {}), ("random", ["--seed", "3"], {"seed": 3})):
        by_main = pca if method == "pca" else folder / "random_main.h5"
        if method != "pca":
            step(directions, "--trajectory", trajectory, "--method", method, *extra_argv, "--out", by_main)
        by_run = folder / f"{method}_run.h5"
        result = directions.run(directions.DirectionsSettings(trajectory=str(trajectory), method=method,
                                                              out=str(by_run), **extra))
        assert_same_datasets(by_main, by_run)
        stored = load_directions_file(by_run)
        np.testing.assert_array_equal(result.vectors, stored.vectors)
        assert result.config == stored.config  # the recorded settings too: the same whichever way it ran


def test_eigendirections_run_equals_main(folder, trajectory):
    argv = ["--iteration", "12", "--steps", "12", "--count", "2", "--dtype", "float64", *EVAL_ARGV]
    by_main, by_run = folder / "eig_main.h5", folder / "eig_run.h5"
    step(eigendirections, "--trajectory", trajectory, "--out", by_main, *argv)
    result = eigendirections.run(eigendirections.EigendirectionsSettings(
        trajectory=str(trajectory), out=str(by_run), iteration=12, steps=12, count=2, dtype="float64", **EVAL))
    assert_same_datasets(by_main, by_run)
    np.testing.assert_array_equal(result.eigenvalues, load_directions_file(by_main).eigenvalues)


def test_landscape_run_equals_main(folder, trajectory, pca):
    by_main, by_run = folder / "land_main.h5", folder / "land_run.h5"
    step(landscape, "--trajectory", trajectory, "--directions", pca, "--out", by_main, "--resolution", 4,
         "--grid-batching", "per_point", *EVAL_ARGV)
    result = landscape.run(landscape.LandscapeSettings(trajectory=str(trajectory), directions=str(pca),
                                                      out=str(by_run), resolution=4, grid_batching="per_point",
                                                      **EVAL))
    assert_same_datasets(by_main, by_run)
    np.testing.assert_array_equal(result.loss, load_landscape(by_main).loss)
    assert result.loss.shape == (4, 4)


def test_spectrum_run_equals_main(folder, trajectory):
    argv = ["--iterations", "0", "12", "--k", "2", "--m", "6", "--dtype", "float64", "--hvp-mode", "double_backprop",
            *EVAL_ARGV]
    by_main, by_run = folder / "spec_main.h5", folder / "spec_run.h5"
    step(spectrum, "--trajectory", trajectory, "--out", by_main, *argv)
    result = spectrum.run(spectrum.SpectrumSettings(
        trajectory=str(trajectory), out=str(by_run), iterations=(0, 12), k=2, m=6, dtype="float64",
        hvp_mode="double_backprop", **EVAL))
    assert_same_datasets(by_main, by_run)
    stored = load_spectra(by_main)
    assert sorted(result.entries) == sorted(stored.entries) == [0, 12]
    np.testing.assert_array_equal(result.entries[12].nodes, stored.entries[12].nodes)


def test_train_run_equals_main(folder):
    """A run trained by main (train_tiny) and the same run by settings hold the same data. Both train here, back to
    back: an earlier test may have changed torch's thread count, and with it the rounding of every step."""
    by_main = train_tiny(folder / "train_main.h5", 0)
    by_run = folder / "train_run.h5"
    path = train.run(train.TrainStepSettings(out=str(by_run), model="lenet", model_option=(("widths", [3, 4, 16, 12]),),
                                             epochs=1, batch_size=128, lr=0.05, seed=0, no_progress=True))
    assert path == by_run
    assert_same_datasets(by_main, by_run)


def test_interpolate_run_equals_main(folder, trajectory):
    other = train_tiny(folder / "other.h5", 1)
    argv = ["--points", "3", "--k", "2", "--m", "5", "--dtype", "float64", "--hvp-mode", "double_backprop", *EVAL_ARGV]
    main_line, main_spectra = folder / "line_main.h5", folder / "ispec_main.h5"
    step(interpolate, "--trajectory-a", trajectory, "--trajectory-b", other, "--out-line", main_line,
         "--out-spectra", main_spectra, *argv)
    run_line, run_spectra = folder / "line_run.h5", folder / "ispec_run.h5"
    result = interpolate.run(interpolate.InterpolateSettings(
        trajectory_a=str(trajectory), trajectory_b=str(other), out_line=str(run_line), out_spectra=str(run_spectra),
        points=3, k=2, m=5, dtype="float64", hvp_mode="double_backprop", **EVAL))
    assert_same_datasets(main_line, run_line)
    assert_same_datasets(main_spectra, run_spectra)
    np.testing.assert_array_equal(result.line.loss, load_landscape(main_line).loss)
    assert sorted(result.spectra.entries) == [0, 1, 2]


def test_settings_built_in_python_are_checked(folder, trajectory, pca):
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        spectrum.run(spectrum.SpectrumSettings(trajectory=str(trajectory), out=str(folder / "x.h5"), k=0))
    with pytest.raises(ValueError, match="eval_fraction must be in \\(0, 1\\], got 2"):
        landscape.run(landscape.LandscapeSettings(trajectory=str(trajectory), directions=str(pca),
                                                  out=str(folder / "x.h5"), eval_fraction=2))
    with pytest.raises(ValueError, match="method must be one of random, pca, hessian, custom, interpolation"):
        directions.run(directions.DirectionsSettings(trajectory=str(trajectory), method="nope",
                                                     out=str(folder / "x.h5")))
    with pytest.raises(ValueError, match="which must be one of largest, smallest, nearest, got 'top'"):
        eigendirections.run(eigendirections.EigendirectionsSettings(trajectory=str(trajectory),
                                                                    out=str(folder / "x.h5"), which="top"))
    assert not (folder / "x.h5").exists()
