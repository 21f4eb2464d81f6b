"""The Python API (gradvis_steps.api): its results equal the steps' on the same model and data (bitwise, the same
computation), its eigenvalues and traces equal dense Hessians, it takes arrays or batches of a torch or Keras model,
and bad input fails in one line naming the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from step_helpers import train_tiny
from torch import nn

from gradvis_steps import directions as directions_step
from gradvis_steps import eigendirections as eigendirections_step
from gradvis_steps import landscape as landscape_step
from gradvis_steps import plot_spectra as plot_spectra_step
from gradvis_steps import spectrum as spectrum_step
from gradvis_steps.api import directions, hessian, landscape
from gradvis_steps.backends import backend
from gradvis_steps.backends.torch.flat import load_flat_parameters, unflatten_buffers
from gradvis_steps.core.slq import starting_vector
from gradvis_steps.data import load_dataset
from gradvis_steps.storage.directions import load_directions_file
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra
from gradvis_steps.storage.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[1]
#: the evaluation the step runs and the API get alike: a small share of the digits, in two uneven batches
EVAL = {"eval_fraction": 0.05, "eval_seed": 3, "batch_size": 50, "device": "cpu", "dtype": "float32",
        "no_progress": True}


# ------------------------------------------------------------------------------ equal to the steps' outputs
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny recorded run, and its last checkpoint rebuilt as a user's model with the steps' evaluation subset."""
    folder = tmp_path_factory.mktemp("api_run")
    path = train_tiny(folder / "trajectory.h5", 0)
    with Trajectory(path) as traj:
        config, params = traj.config, traj.params(-1)
        buffers, buffer_layout, iteration = (traj.buffers(-1) if traj.buffer_layout else None, traj.buffer_layout,
                                             int(traj.iterations[-1]))
    dataset = load_dataset(config["dataset"])
    model = backend("torch").build_model(config, dataset)
    load_flat_parameters(model, torch.as_tensor(params))
    if buffer_layout:
        model.load_state_dict(unflatten_buffers(buffers, buffer_layout), strict=False)
    x, y = dataset.evaluation_subset(EVAL["eval_fraction"], EVAL["eval_seed"])
    return {"folder": folder, "trajectory": path, "model": model, "x": x, "y": y, "iteration": iteration}


def test_density_and_trace_equal_the_spectrum_step_bitwise(recorded):
    out = recorded["folder"] / "spectra.h5"
    step = spectrum_step.run(spectrum_step.SpectrumSettings(
        trajectory=str(recorded["trajectory"]), out=str(out), iterations=(recorded["iteration"],), k=3, m=10, seed=5,
        hvp_mode="double_backprop", **EVAL)).entries[recorded["iteration"]]
    h = hessian(recorded["model"], (recorded["x"], recorded["y"]), "cross_entropy", k=3, m=10, seed=5,
                batch_size=EVAL["batch_size"], hvp_mode="double_backprop", key=recorded["iteration"])
    mine = h.density()
    for name in ("nodes", "weights", "alpha1", "grid", "density"):
        assert np.array_equal(getattr(mine, name), getattr(step, name)), name
    assert mine.sigma == step.sigma
    assert h.trace().estimate == step.summary["trace_estimate"]
    assert h.trace().stderr == step.summary["trace_stderr"]
    # saved in the step's format: read back equal, and drawn by the plot_spectra step
    saved = load_spectra(mine.save(recorded["folder"] / "api_spectra.h5"))
    assert np.array_equal(saved.entries[recorded["iteration"]].nodes, step.nodes)
    assert saved.attrs["k"] == 3 and saved.attrs["m"] == 10
    figures = recorded["folder"] / "api_figures"
    plot_spectra_step.run(plot_spectra_step.PlotSpectraSettings(spectra=str(recorded["folder"] / "api_spectra.h5"),
                                                                out_dir=str(figures)))
    assert list(figures.glob("*.png"))
    assert mine.plot().axes


def test_eigen_directions_equal_the_eigendirections_step_bitwise(recorded):
    out = recorded["folder"] / "eig.h5"
    eigendirections_step.run(eigendirections_step.EigendirectionsSettings(
        trajectory=str(recorded["trajectory"]), out=str(out), count=2, steps=12, hvp_mode="double_backprop", **EVAL))
    step = load_directions_file(out)
    mine = directions.eigen(recorded["model"], (recorded["x"], recorded["y"]), "cross_entropy", count=2, steps=12,
                            batch_size=EVAL["batch_size"], hvp_mode="double_backprop")
    assert np.array_equal(mine.vectors, step.vectors)
    assert np.array_equal(mine.eigenvalues, step.eigenvalues)
    assert np.array_equal(mine.residuals, step.residuals)
    assert mine.method == step.method == "eigenvector"


def test_random_plane_and_landscape_equal_the_steps_bitwise(recorded):
    folder, trajectory = recorded["folder"], str(recorded["trajectory"])
    plane = folder / "random.h5"
    directions_step.run(directions_step.DirectionsSettings(trajectory=trajectory, method="random", out=str(plane),
                                                           seed=4))
    mine = directions.random(recorded["model"], seed=4)
    stored = load_directions_file(plane)
    assert np.array_equal(mine.vectors, stored.vectors)
    assert (mine.normalization, mine.labels) == (stored.normalization, stored.labels)
    out = folder / "landscape.h5"
    step = landscape_step.run(landscape_step.LandscapeSettings(
        trajectory=trajectory, directions=str(plane), out=str(out), resolution=5, grid_batching="per_point", **EVAL))
    surface = landscape(recorded["model"], (recorded["x"], recorded["y"]), "cross_entropy", mine, resolution=5,
                        trajectory=trajectory, batch_size=EVAL["batch_size"], grid_batching="per_point")
    for name in ("loss", "accuracy", "trajectory", "residuals", "trajectory_loss", "trajectory_accuracy",
                 "iterations"):
        assert np.array_equal(getattr(surface, name), getattr(step, name), equal_nan=True), name
    assert all(np.array_equal(a, b) for a, b in zip(surface.axes, step.axes, strict=True))
    again = load_landscape(surface.save(folder / "api_landscape.h5"))
    assert np.array_equal(again.loss, step.loss) and again.labels == step.labels
    assert surface.plot().axes and surface.plot("surface").axes
    # the file form of the directions, and explicit ranges, give the same grid values as the object and the step
    ranged = landscape_step.run(landscape_step.LandscapeSettings(
        trajectory=trajectory, directions=str(plane), out=str(folder / "ranged.h5"), dims=1, resolution=4,
        range=(-0.5, 1.0), grid_batching="per_point", **EVAL))
    line = landscape(recorded["model"], (recorded["x"], recorded["y"]), "cross_entropy", plane, dims=1, resolution=4,
                     range=(-0.5, 1.0), batch_size=EVAL["batch_size"], grid_batching="per_point")
    assert np.array_equal(line.loss, ranged.loss) and line.plot().axes


def test_pca_runs_the_directions_step_on_the_trajectory(recorded):
    out = recorded["folder"] / "pca.h5"
    directions_step.run(directions_step.DirectionsSettings(trajectory=str(recorded["trajectory"]), method="pca",
                                                           out=str(out)))
    mine = directions.pca(recorded["trajectory"])
    assert np.array_equal(mine.vectors, load_directions_file(out).vectors)
    assert np.array_equal(load_directions_file(mine.save(recorded["folder"] / "again.h5")).vectors, mine.vectors)


# ------------------------------------------------------------------------------ against dense Hessians
def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _digits_like(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def _dense_hessian(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Hessian of the mean cross-entropy in the flat parameters, by torch.autograd.functional.hessian."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def loss(theta):
        pieces, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            pieces[name] = theta[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(model, pieces, (xt,)), yt)

    return torch.autograd.functional.hessian(loss, flat).numpy()


def test_top_eigenvalues_trace_and_moments_equal_a_dense_hessian():
    model = _mlp()
    x, y = _digits_like()
    dense = _dense_hessian(model, x, y)
    truth = np.linalg.eigvalsh(dense)
    dim = len(truth)
    h = hessian(model, (x, y), "cross_entropy", k=4, m=dim)  # full Lanczos: exact quadrature
    top = h.eigenvalues(top=3, steps=dim)
    assert np.allclose(top.values, truth[::-1][:3], rtol=1e-8, atol=1e-10)
    assert np.all(top.residuals < 1e-7)
    for value, vector in zip(top.values, top.vectors, strict=True):
        assert np.allclose(dense @ vector, value * vector, atol=1e-7)
    density = h.density()
    # Hutchinson: dim * mean v_i^T H v_i over the SLQ starting vectors, recomputed with the dense matrix
    starts = np.stack([starting_vector(dim, h.seed, i) for i in range(h.k)])
    quadratic = np.einsum("ij,jk,ik->i", starts, dense, starts)
    assert np.isclose(h.trace().estimate, dim * quadratic.mean(), rtol=1e-10)
    # full-Lanczos Gauss quadrature is exact for the moments: sum_j w_ij theta_ij^p = v_i^T H^p v_i
    for p, matrix in ((1, dense), (2, dense @ dense)):
        moments = np.einsum("ij,jk,ik->i", starts, matrix, starts)
        assert np.allclose((density.weights * density.nodes ** p).sum(axis=1), moments, rtol=1e-8, atol=1e-12)
    assert np.allclose(h.hvp(starts[0]), dense @ starts[0], atol=1e-12)


def test_batches_are_one_evaluation_set_weighted_by_size():
    model = _mlp(2)
    x, y = _digits_like(37)
    batches = [(torch.as_tensor(x[i:i + 10]), torch.as_tensor(y[i:i + 10])) for i in range(0, 37, 10)]
    from_batches = hessian(model, batches, "cross_entropy", k=2, m=8)
    from_arrays = hessian(model, (x, y), "cross_entropy", k=2, m=8, batch_size=10)
    assert from_batches.problem.objective.batch_size == 10
    assert np.array_equal(from_batches.density().nodes, from_arrays.density().nodes)
    whole = hessian(model, (x, y), "cross_entropy", k=2, m=8)  # one batch: the same numbers to rounding
    assert np.allclose(whole.density().nodes, from_arrays.density().nodes, rtol=1e-10, atol=1e-12)
    assert from_batches.problem.data.y.dtype == y.dtype  # targets keep their dtype


def test_a_keras_model_against_the_closed_form_hessian_of_least_squares():
    pytest.importorskip("tensorflow")
    import keras

    from gradvis_steps.backends.tensorflow import dtype_policy

    with dtype_policy("float64"):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 3)), rng.standard_normal(30)
    # L = mean_i (w.x_i + b - y_i)^2: H = (2/n) A^T A with A = [x, 1], whatever the parameter order
    design = np.concatenate([x, np.ones((30, 1))], axis=1)
    truth = np.linalg.eigvalsh(2 / 30 * design.T @ design)[::-1]
    h = hessian(model, (x, y), "mse", k=2, m=4)
    assert h.problem.framework == "tensorflow"
    assert np.allclose(h.eigenvalues(top=2, steps=4).values, truth[:2], rtol=1e-10)
    assert np.isclose(h.density().summary["lambda_max"], truth[0], rtol=1e-10)
    import tensorflow as tf  # batches from a tf.data pipeline: one evaluation set, batch size the first batch's

    batches = hessian(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), "mse", k=2, m=4)
    assert batches.problem.objective.batch_size == 8
    arrays = hessian(model, (x, y), "mse", k=2, m=4, batch_size=8)
    assert np.array_equal(batches.density().nodes, arrays.density().nodes)


def test_a_keras_convolution_takes_channels_last_images_as_keras_does():
    pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3), keras.layers.Flatten(),
                              keras.layers.Dense(4)])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 6, 6, 2)).astype(np.float32), rng.integers(0, 4, 20)
    truth = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x))  # Keras' own mean loss
    h = hessian(model, (x, y), "cross_entropy")
    assert np.isclose(h.problem.objective.loss(h.problem.theta), float(truth), rtol=1e-5)


def test_float64_inputs_to_a_float32_model_are_rounded_with_a_warning():
    model = nn.Linear(4, 3)
    x, y = _digits_like()
    with pytest.warns(UserWarning, match="the inputs are float64, evaluated in float32"):
        hessian(model, (x, y))
    assert hessian(model, (x, y), dtype="float64").problem.dtype == "float64"


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("loss", "data", "message"), [
    ("hinge", None, r"unknown loss 'hinge'; accepted: cross_entropy, mse"),
    ("cross_entropy", "short", r"data has 40 inputs .* and 39 targets .*: give one target per input"),
    ("cross_entropy", "float", r"loss 'cross_entropy' needs integer class targets, got float64 targets"),
    ("cross_entropy", "pairs", r"batch 0 of data is a ndarray, not an \(x, y\) pair"),
])
def test_bad_input_fails_in_one_line_naming_the_value(loss, data, message):
    x, y = _digits_like()
    given = {None: (x, y), "short": (x, y[:-1]), "float": (x, y.astype(np.float64)), "pairs": [x, x, x]}[data]
    with pytest.raises(ValueError, match=message) as error:
        hessian(_mlp(), given, loss)
    assert "\n" not in str(error.value)


def test_a_model_of_no_known_framework_is_refused():
    with pytest.raises(ValueError, match=r"model of type builtins.dict is not a torch nn.Module or a Keras model"):
        hessian({}, _digits_like())


def test_the_api_imports_no_framework_itself():
    code = ("import sys; import gradvis_steps.api; loaded = sorted(set(sys.modules) & "
            "{'torch', 'tensorflow', 'keras', 'matplotlib'}); assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ the example
def test_the_api_tour_example_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "api_tour.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("spectrum.h5", "density.png", "landscape.h5", "landscape.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert load_landscape(tmp_path / "landscape.h5").loss.shape == (11, 11)
    assert "top eigenvalues" in done.stdout
