"""The TensorFlow backend end to end: training into the framework-neutral trajectory store (per-iteration
checkpoints read back exactly, the SGD + momentum update, resume), then the step modules run by hand on the TF
trajectory (train -> directions -> eigendirections -> landscape -> spectrum), as the workflow runs them with
``framework: tensorflow``. Numbers are checked against independent truths: the Keras model's own forward pass in
float64 (its layers and variables, not the objective's functional call), numpy cross-entropy, and products of the
TF objective's exact HVP. Skipped where TensorFlow is missing.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the tensorflow backend needs TensorFlow (the 'tensorflow' extra)")

from step_helpers import interrupt_after  # noqa: E402
from tf_helpers import few_tf_threads, float64_copy  # noqa: E402

few_tf_threads()

from gradvis_steps import directions, eigendirections, interpolate, landscape, spectrum  # noqa: E402
from gradvis_steps import train as train_step  # noqa: E402
from gradvis_steps.backends import backend, backend_for_trajectory  # noqa: E402
from gradvis_steps.backends.tensorflow import TFObjective, model_for  # noqa: E402
from gradvis_steps.backends.tensorflow.flat import flatten_buffers, flatten_parameters, load_flat_parameters  # noqa: E402
from gradvis_steps.backends.tensorflow.objective import channels_last  # noqa: E402
from gradvis_steps.backends.tensorflow.training import epoch_permutation  # noqa: E402
from gradvis_steps.core.slq import starting_vector  # noqa: E402
from gradvis_steps.core.training import TrainSettings  # noqa: E402
from gradvis_steps.storage.directions import load_directions_file  # noqa: E402
from gradvis_steps.storage.landscape import load_landscape  # noqa: E402
from gradvis_steps.storage.spectra import load_spectra  # noqa: E402
from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter  # noqa: E402

EVAL_FRACTION = 0.05  # 75 of the digits training samples
EVAL = ["--eval-fraction", str(EVAL_FRACTION), "--no-progress"]
LENET = {"name": "lenet", "widths": [3, 4, 16, 12]}
TRAIN = ["--framework", "tensorflow", "--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--epochs", "2",
         "--batch-size", "128", "--lr", "0.05", "--no-progress"]


def step(module, *argv) -> None:
    assert module.main([str(a) for a in argv]) == 0


def reference_loss(model, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the Keras model's own float64 forward pass at ``theta`` (numpy)."""
    copy = float64_copy(model)
    load_flat_parameters(copy, np.asarray(theta, dtype=np.float64))
    logits = np.asarray(copy(channels_last(x).astype(np.float64), training=False))
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_z - logits[np.arange(len(y)), y])), float(np.mean(logits.argmax(axis=1) == y))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tf-steps")


@pytest.fixture(scope="module")
def trajectory(folder):
    path = folder / "trajectory.h5"
    step(train_step, *TRAIN, "--seed", 0, "--out", path)
    return path


# ------------------------------------------------------------------------------------------------ training
def test_the_train_step_writes_a_tensorflow_trajectory(trajectory, digits):
    with Trajectory(trajectory) as traj:
        assert traj.config["framework"] == "tensorflow" and traj.config["model"] == LENET
        assert len(traj) == 25 and list(traj.iterations) == list(range(25))  # 2 epochs x 12 steps + the initial point
        assert backend_for_trajectory(traj) is backend("tensorflow")
        model = model_for(traj.config, digits)
        assert traj.layout == backend("tensorflow").parameter_layout(model)
        assert traj.layout["conv1/kernel"].shape == (5, 5, 1, 3) and traj.layout["conv1/kernel"].filter_axis == -1
        assert traj.layout["fc3/kernel"].kind == "linear" and traj.layout["fc3/kernel"].n_filters == 10
        assert np.array_equal(traj.params(0), flatten_parameters(model))  # the seeded initial point, exactly
        assert np.isnan(traj.batch_loss[-1]) and np.all(np.isfinite(traj.batch_loss[:-1]))
        assert traj.batch_loss[-2] < traj.batch_loss[0]  # it learns
        assert "keras" in traj.provenance["versions"]


def test_checkpoints_follow_sgd_with_momentum_and_read_back_exactly(tmp_path, digits):
    """theta_1 = theta_0 - lr g_0 and theta_2 = theta_1 - lr (mu g_0 + g_1), the gradients g_t of the mean loss of
    the mini-batches (LeNet has no batch-norm: training and inference modes agree) taken by the TF objective; the
    stored rows are bitwise what the model holds."""
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.1, momentum=0.9, max_iterations=2, seed=5)
    config = {"framework": "tensorflow", "model": LENET, "dataset": {"name": "digits"}, "train": {"seed": 5}}
    model = model_for(config, digits)
    theta0 = flatten_parameters(model)
    writer = TrajectoryWriter(tmp_path / "t.h5", backend("tensorflow").parameter_layout(model),
                              backend("tensorflow").buffer_layout(model), config, {})
    summary = backend("tensorflow").train(model, digits, settings, writer, device="/CPU:0", progress=False)
    writer.commit(summary)
    order = epoch_permutation(len(digits.x_train), 5, 0)

    def batch_gradient(theta: np.ndarray, batch: np.ndarray) -> np.ndarray:
        copy = model_for(config, digits, "float64")
        objective = TFObjective(copy, digits.x_train[batch], digits.y_train[batch], dtype="float64")
        return objective.grad(theta.astype(np.float64))

    with Trajectory(tmp_path / "t.h5") as traj:
        assert list(traj.iterations) == [0, 1, 2] and summary["iterations"] == 2
        assert np.array_equal(traj.params(0), theta0)
        g0 = batch_gradient(traj.params(0), order[:64])
        np.testing.assert_allclose(traj.params(1), theta0 - 0.1 * g0, rtol=1e-5, atol=1e-6)
        g1 = batch_gradient(traj.params(1), order[64:128])
        np.testing.assert_allclose(traj.params(2), traj.params(1) - 0.1 * (0.9 * g0 + g1), rtol=1e-5, atol=1e-6)
        assert np.array_equal(traj.params(-1), flatten_parameters(model))  # the model holds the final point
        assert np.array_equal(traj.buffers(-1), flatten_buffers(model))


def _train_resnet(path, digits, fail_after: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ResNet-8 (batch-norm: buffers must resume too), 3 epochs; optionally interrupted and resumed."""
    config = {"framework": "tensorflow", "model": {"name": "resnet", "depth": 8, "width": 2},
              "dataset": {"name": "digits"}, "train": {"seed": 1}}
    settings = TrainSettings(epochs=3, batch_size=256, lr=0.05, seed=1)
    tf_backend = backend("tensorflow")
    model = model_for(config, digits)
    writer = TrajectoryWriter(path, tf_backend.parameter_layout(model), tf_backend.buffer_layout(model), config, {})
    if fail_after is not None:
        interrupt_after(writer, fail_after)
        with pytest.raises(KeyboardInterrupt):
            tf_backend.train(model, digits, settings, writer, progress=False)
        writer.close()
        model = model_for({**config, "train": {"seed": 99}}, digits)  # a fresh process: other initial values
        writer = TrajectoryWriter(path, tf_backend.parameter_layout(model), tf_backend.buffer_layout(model), config,
                                  {}, resume=True)
    tf_backend.train(model, digits, settings, writer, progress=False)
    writer.commit()
    with Trajectory(path) as traj:
        return traj.file["params"][()], traj.file["buffers"][()], traj.iterations.copy()


def test_resume_reproduces_the_uninterrupted_run(tmp_path, digits):
    full = _train_resnet(tmp_path / "full.h5", digits, None)
    resumed = _train_resnet(tmp_path / "resumed.h5", digits, fail_after=9)  # dies in epoch 2
    assert full[1].shape[1] > 0 and not np.array_equal(full[1][0], full[1][-1])  # the statistics moved
    for a, b in zip(full, resumed, strict=True):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------------------- steps
@pytest.fixture(scope="module")
def params(trajectory) -> np.ndarray:
    with h5py.File(trajectory) as f:
        return f["params"][()].astype(np.float64)


@pytest.fixture(scope="module")
def evaluation(trajectory, digits):
    """The user's model (float32, as the run config builds it) and the evaluation subset the steps use."""
    with Trajectory(trajectory) as traj:
        model = model_for(traj.config, digits)
    x, y = digits.evaluation_subset(EVAL_FRACTION, 0)
    return model, x, y


@pytest.fixture(scope="module")
def hvp64(trajectory):
    """Float64 HVP of the TF objective at the final checkpoint, numpy -> numpy."""
    with Trajectory(trajectory) as traj:
        objective = backend_for_trajectory(traj).objective_for_trajectory(traj, fraction=EVAL_FRACTION,
                                                                          device="cpu", dtype="float64")
        theta = objective.from_numpy(traj.params(-1))
    return lambda v: objective.hvp(theta, objective.from_numpy(v))


def test_steps_run_end_to_end_on_a_tensorflow_trajectory(folder, trajectory, params, evaluation, hvp64):
    pca, eig, hessian = folder / "pca.h5", folder / "eig.h5", folder / "hessian.h5"
    step(directions, "--trajectory", trajectory, "--method", "pca", "--out", pca)
    step(eigendirections, "--trajectory", trajectory, "--out", eig, "--count", 2, "--steps", 40, "--dtype",
         "float64", *EVAL)
    step(directions, "--trajectory", trajectory, "--method", "hessian", "--eigendirections", eig, "--out", hessian)

    # eigendirections: converged Ritz pairs of the TF Hessian, checked with independent products
    found = load_directions_file(hessian)
    assert found.vectors.shape == (2, params.shape[1]) and found.eigenvalues[0] > found.eigenvalues[1] > 0
    for v, value in zip(found.vectors.astype(np.float64), found.eigenvalues, strict=True):
        hv = hvp64(v)
        assert (v @ hv) / (v @ v) == pytest.approx(value, rel=1e-5)
        assert np.linalg.norm(hv - value * v) <= 1e-5 * abs(value)

    # landscape on the PCA plane: grid and checkpoint losses against the Keras model's own float64 forward pass
    out = folder / "landscape.h5"
    step(landscape, "--trajectory", trajectory, "--directions", pca, "--resolution", 5, "--out", out, *EVAL)
    result = load_landscape(out)
    vectors = load_directions_file(pca).vectors.astype(np.float64)
    model, x, y = evaluation
    assert result.shape == (5, 5) and result.filled.all() and list(result.iterations) == list(range(25))
    for i in (0, 24):
        loss, accuracy = reference_loss(model, params[i], x, y)
        assert result.checkpoint_loss[i] == pytest.approx(loss, rel=2e-5)
        assert result.checkpoint_accuracy[i] == pytest.approx(accuracy, abs=1.5 / len(y))
    ax, ay = result.axes
    for i, j in ((0, 0), (2, 3), (4, 1)):
        theta = params[-1] + ax[i] * vectors[0] + ay[j] * vectors[1]
        assert result.loss[i, j] == pytest.approx(reference_loss(model, theta, x, y)[0], rel=2e-5)

    # spectrum: the quadratures' moments are those of the TF Hessian for the documented starting vectors
    spectra_path = folder / "spectra.h5"
    step(spectrum, "--trajectory", trajectory, "--iterations", 0, 24, "--out", spectra_path, "--k", 3, "--m", 12,
         "--dtype", "float64", *EVAL)
    spectra = load_spectra(spectra_path)
    assert sorted(spectra.entries) == [0, 24]
    assert spectra.attrs["provenance"]["hvp"]["mode"] == "forward_over_reverse"
    entry = spectra.entries[24]
    for i in range(3):
        v = starting_vector(params.shape[1], 0, i)
        hv = hvp64(v)
        assert entry.alpha1[i] == pytest.approx(v @ hv, rel=1e-9, abs=1e-12)
        assert np.sum(entry.weights[i] * entry.nodes[i] ** 2) == pytest.approx(hv @ hv, rel=1e-8)
    assert entry.summary["lambda_max"] == pytest.approx(found.eigenvalues[0], rel=1e-3)


def test_interpolation_between_two_tensorflow_runs(folder, trajectory, evaluation):
    other = folder / "trajectory-seed1.h5"
    step(train_step, *TRAIN, "--seed", 1, "--out", other)
    line_path, spectra_path = folder / "line.h5", folder / "line-spectra.h5"
    step(interpolate, "--trajectory-a", trajectory, "--trajectory-b", other, "--points", 3, "--out-line", line_path,
         "--out-spectra", spectra_path, "--k", 2, "--m", 8, "--dtype", "float64", *EVAL)
    model, x, y = evaluation
    with Trajectory(trajectory) as a, Trajectory(other) as b:
        assert b.config["train"]["seed"] == 1
        theta_a, theta_b = a.params(-1).astype(np.float64), b.params(-1).astype(np.float64)
    line = load_landscape(line_path)
    for t, loss in zip(line.axes[0], line.loss, strict=True):
        assert loss == pytest.approx(reference_loss(model, (1 - t) * theta_a + t * theta_b, x, y)[0], rel=1e-10)
    spectra = load_spectra(spectra_path)
    assert sorted(spectra.entries) == [0, 1, 2] and spectra.attrs["provenance"]["hvp"]["mode"] == "forward_over_reverse"


def test_a_custom_keras_model_and_dataset_by_entry_point(tmp_path, digits):
    out = tmp_path / "custom.h5"
    step(train_step, "--framework", "tensorflow", "--model", "custom", "--model-option",
         "entry_point=tf_custom_models:small_cnn", "--model-option", "filters=2", "--dataset", "custom",
         "--dataset-option", "entry_point=tf_custom_models:blobs", "--epochs", 2, "--batch-size", 32, "--lr", 0.1,
         "--no-progress", "--out", out)
    from tf_custom_models import blobs

    data = blobs()
    with Trajectory(out) as traj:
        assert len(traj) == 7 and {spec.kind for spec in traj.layout} == {"conv", "bias", "batchnorm", "linear"}
        assert len(traj.buffer_layout) == 2 and not np.array_equal(traj.buffers(0), traj.buffers(-1))
        objective = backend_for_trajectory(traj).objective_for_trajectory(traj, fraction=1.0, dtype="float64")
        assert objective.layout == traj.layout  # the run's names, whatever Keras called the layers this time
        model = model_for(traj.config, data)
        from gradvis_steps.backends.tensorflow.flat import load_buffers

        load_buffers(model, traj.buffers(-1), backend("tensorflow").buffer_layout(model))
        expected, accuracy = reference_loss(model, traj.params(-1), data.x_train, data.y_train)
        got = objective.evaluate(objective.from_numpy(traj.params(-1)))
    assert got.loss == pytest.approx(expected, rel=1e-12) and got.accuracy == accuracy


def test_bad_devices_and_modes_are_named(trajectory):
    tf_backend = backend("tensorflow")
    assert tf_backend.resolve_device("cpu") == "/CPU:0" == tf_backend.resolve_device("/cpu:0")
    with pytest.raises(ValueError, match="'tpu:7' is not a TensorFlow device"):
        tf_backend.resolve_device("tpu:7")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(ValueError, match="'cuda:1' requested but TensorFlow sees 0 GPU"):
            tf_backend.resolve_device("cuda:1")
    with Trajectory(trajectory) as traj:
        with pytest.raises(ValueError, match="hvp_mode 'fast' is not one of"):
            tf_backend.objective_for_trajectory(traj, hvp_mode="fast")
        with pytest.raises(ValueError, match="dtype 'float16' is not one of"):
            tf_backend.objective_for_trajectory(traj, dtype="float16")


def test_an_objective_on_the_cpu_limits_numpys_blas_to_one_thread(hvp64):
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert pools and all(pool["num_threads"] == 1 for pool in pools), pools
