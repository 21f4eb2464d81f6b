"""Losses: the spec and its checks, float (regression) targets kept as they are from a custom loader through
training and the objective, and mse on the diabetes set through the train, landscape, plot and spectrum steps in both
backends. (Every loss against its dense Hessian: tests/test_backend_contract.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from step_helpers import fails, step

from gradvis_steps import landscape, plot_landscape, spectrum
from gradvis_steps import train as train_step
from gradvis_steps.backends import backend, backend_for_trajectory
from gradvis_steps.data import dataset_facts, load_dataset
from gradvis_steps.losses import LOSSES, check_targets, is_classification, loss_of, normalize
from gradvis_steps.storage.landscape import load_landscape
from gradvis_steps.storage.spectra import load_spectra
from gradvis_steps.storage.trajectory import Trajectory

#: the issue's case: a custom loader's float targets, which used to become the classes 0, 1, 5
FLOAT_TARGETS = [0.07, 1.99, 5.65]


def float_targets() -> dict:
    """A custom dataset entry point with three samples of float targets."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    return {"x_train": x, "y_train": FLOAT_TARGETS}


# -- the spec ----------------------------------------------------------------------------------------------------

def test_specs_normalize_to_the_run_config_form():
    assert normalize(None) == normalize("cross_entropy") == {"name": "cross_entropy"}
    assert normalize({"name": "mse"}) == {"name": "mse"}
    custom = normalize("custom", {"entry_point": "custom_losses:torch_log_cosh", "scale": 2.0})
    assert custom == {"name": "custom", "entry_point": "custom_losses:torch_log_cosh", "scale": 2.0}
    assert loss_of({"dataset": {"name": "digits"}}) == {"name": "cross_entropy"}  # older trajectories
    assert loss_of({"loss": {"name": "mse"}}) == {"name": "mse"}
    assert [is_classification(name) for name in LOSSES] == [True, False, True, False]


@pytest.mark.parametrize(("spec", "message"), [
    ("hinge", "unknown loss 'hinge'; accepted: cross_entropy, mse, bce_with_logits, custom"),
    ("custom", "loss 'custom' needs entry_point"),
    ({"name": "custom", "entry_point": "no_such_module:loss"}, "cannot import module 'no_such_module'"),
    ({"name": "custom", "entry_point": "custom_losses:torch_log_cosh", "sharpness": 2},
     "options ['sharpness'] do not fit"),
    ({"name": "mse", "reduction": "sum"}, "loss 'mse' takes no options, got ['reduction']"),
])
def test_bad_specs_fail_in_one_line_naming_the_value(spec, message):
    with pytest.raises(ValueError, match="^[^\n]*$") as error:
        normalize(spec)
    assert message in str(error.value)


def test_targets_that_do_not_fit_the_loss_are_refused():
    floats, labels = np.array(FLOAT_TARGETS), np.array([0, 2, 1])
    for name in ("cross_entropy", "bce_with_logits"):
        with pytest.raises(ValueError, match=f"loss '{name}' needs integer class targets, got float64 targets"):
            check_targets({"name": name}, floats, 1)
    with pytest.raises(ValueError, match=r"targets of shape \(3,\) need a model output width \(num_classes\) of 1"):
        check_targets({"name": "mse"}, floats, 10)
    with pytest.raises(ValueError, match="needs 0/1 labels"):
        check_targets({"name": "bce_with_logits"}, labels, 1)
    check_targets({"name": "mse"}, floats, 1)
    check_targets({"name": "cross_entropy"}, labels, 3)
    check_targets({"name": "custom", "entry_point": "custom_losses:torch_log_cosh"}, floats, 1)


# -- float targets through the custom loader, training and the objective -----------------------------------------

def test_a_custom_loaders_float_targets_stay_float():
    dataset = load_dataset({"name": "custom", "entry_point": "test_losses:float_targets"})
    assert dataset.y_train.dtype == np.float64 and dataset.y_train.tolist() == FLOAT_TARGETS
    assert dataset.num_classes == 1 and dataset.is_regression  # one output per float target
    x, y = dataset.evaluation_subset(1.0, 0)
    assert y.dtype == np.float64 and y.tolist() == FLOAT_TARGETS


def test_num_classes_is_the_output_width_the_targets_need():
    from gradvis_steps.data import ArrayDataset

    x = np.zeros((3, 2), np.float32)
    assert ArrayDataset("binary", x, np.array([0, 1, 1]), 1).num_classes == 1  # one logit for bce_with_logits
    assert ArrayDataset("pairs", x, np.ones((3, 2)), 2).is_regression
    with pytest.raises(ValueError, match=r"targets of shape \(3,\) need num_classes .* 1, got 10"):
        ArrayDataset("floats", x, np.array(FLOAT_TARGETS), 10)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got \[0, 5\]"):
        ArrayDataset("labels", x, np.array([0, 1, 5]), 2)
    with pytest.raises(ValueError, match="must be 0/1 labels"):
        ArrayDataset("multi", x, np.array([[0, 2], [1, 0], [0, 0]]), 2)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_float_targets_refuse_cross_entropy_and_train_with_mse(framework, tmp_path, capsys):
    if framework == "tensorflow":
        pytest.importorskip("tensorflow")
    args = ["--framework", framework, "--dataset", "custom", "--dataset-option",
            "entry_point=test_losses:float_targets",
            "--model", "mlp", "--model-option", "hidden=[3]", "--batch-size", 2, "--epochs", 2, "--no-progress"]
    error = fails(train_step, [*args, "--out", tmp_path / "ce.h5"], capsys)
    assert "loss 'cross_entropy' needs integer class targets, got float64 targets" in error
    assert not (tmp_path / "ce.h5").exists()
    out = tmp_path / "mse.h5"
    step(train_step, *args, "--loss", "mse", "--out", out)
    with Trajectory(out) as trajectory:
        assert trajectory.config["loss"] == {"name": "mse"}
        assert len(trajectory) == 5 and np.isfinite(trajectory.batch_loss[trajectory.batch_loss_known]).all()
        objective = backend_for_trajectory(trajectory).objective_for_trajectory(
            trajectory, fraction=1.0, dtype="float64", device="cpu", batch_size=2)
    # the objective's targets are the loader's floats, bit for bit (float64 objective)
    assert np.asarray(objective.to_numpy(objective.y) if framework == "torch" else
                      np.concatenate([yb.numpy() for _, yb in objective.reduction.batches()])).ravel().tolist() \
        == FLOAT_TARGETS


# -- mse on diabetes through the steps, both backends -----------------------------------------------------------

def test_diabetes_facts_are_known_without_loading():
    facts = dataset_facts("diabetes")
    dataset = load_dataset("diabetes")
    assert (facts.input_shape, facts.num_classes, facts.n_train) == (dataset.input_shape, 1, len(dataset.x_train))
    assert facts.regression and dataset.is_regression and dataset.x_train.shape == (400, 10)
    assert abs(dataset.y_train.mean()) < 1e-12 and dataset.y_train.std() == pytest.approx(1.0)  # standardized
    assert np.allclose(dataset.x_train.mean(axis=0), 0, atol=1e-6)


@pytest.fixture(scope="module", params=["torch", "tensorflow"])
def mse_run(request, tmp_path_factory):
    framework = request.param
    if framework == "tensorflow":
        pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp(f"mse-{framework}")
    trajectory = folder / "trajectory.h5"
    step(train_step, "--framework", framework, "--dataset", "diabetes", "--model", "mlp", "--model-option",
         "hidden=[8]", "--loss", "mse", "--batch-size", 100, "--epochs", 2, "--lr", 0.05, "--no-progress",
         "--out", trajectory)
    return framework, folder, trajectory


def _numpy_mse_of_last_checkpoint(framework, trajectory_path, fraction):
    """The mean squared error of the last checkpoint, from the backend's model forward pass and numpy."""
    with Trajectory(trajectory_path) as trajectory:
        config, params = trajectory.config, np.asarray(trajectory.params(-1), dtype=np.float64)
        objective = backend(framework).objective_for_trajectory(trajectory, fraction=fraction, dtype="float64",
                                                                device="cpu")
    dataset = load_dataset("diabetes")
    x, y = dataset.evaluation_subset(fraction, 0)
    # a plain forward pass of the mlp from the flat vector (weights, biases, ReLU between)
    specs, h = list(objective.layout), x.astype(np.float64)
    pairs = list(zip(specs[0::2], specs[1::2], strict=True))
    for index, (weight, bias) in enumerate(pairs):
        w = params[weight.slice].reshape(weight.shape)
        h = h @ (w if weight.filter_axis % 2 == 1 else w.T) + params[bias.slice]
        if index < len(pairs) - 1:
            h = np.maximum(h, 0)
    assert config["loss"] == {"name": "mse"}
    return float(np.mean((h[:, 0] - y) ** 2))


def test_mse_training_lowers_the_loss_and_landscape_and_spectrum_run(mse_run):
    framework, folder, trajectory = mse_run
    with Trajectory(trajectory) as traj:
        losses = traj.batch_loss[traj.batch_loss_known]
        assert len(traj) == 9 and np.isfinite(losses).all()  # 2 epochs of 4 batches, plus the initial point
        assert losses[-1] < losses[0]
    from gradvis_steps import directions

    pca = folder / "pca.h5"
    step(directions, "--trajectory", trajectory, "--method", "pca", "--out", pca)
    land = folder / "landscape.h5"
    step(landscape, "--trajectory", trajectory, "--directions", pca, "--resolution", 3, "--eval-fraction", 0.25,
         "--dtype", "float64", "--no-progress", "--out", land)
    result = load_landscape(land)
    assert result.loss.shape == (3, 3) and np.isfinite(result.loss).all()
    assert np.isnan(result.accuracy).all()  # mse: no accuracy, and no plot of one
    expected = _numpy_mse_of_last_checkpoint(framework, trajectory, 0.25)
    assert result.checkpoint_loss[-1] == pytest.approx(expected, rel=1e-9)  # the true loss at the last checkpoint
    assert np.isnan(result.checkpoint_accuracy).all()
    step(plot_landscape, "--landscape", land, "--contour", folder / "landscape.png")
    assert (folder / "landscape.png").stat().st_size > 0
    line = folder / "line.h5"
    step(landscape, "--trajectory", trajectory, "--directions", pca, "--dims", 1, "--resolution", 3,
         "--eval-fraction", 0.25, "--no-progress", "--out", line)
    step(plot_landscape, "--landscape", line, "--line", folder / "line.png")
    from gradvis_steps.render.landscape_plots import plot_line

    assert len(plot_line(load_landscape(line)).axes) == 1  # no accuracy axis of NaN values
    spectra = folder / "spectra.h5"
    step(spectrum, "--trajectory", trajectory, "--every", 4, "--k", 1, "--m", 4, "--dtype", "float64",
         "--eval-fraction", 0.25, "--no-progress", "--out", spectra)
    loaded = load_spectra(spectra)
    assert sorted(loaded.entries) == [0, 4, 8]
    assert all(np.isfinite(entry.nodes).all() for entry in loaded.entries.values())


# -- the workflow ------------------------------------------------------------------------------------------------

def test_run_ids_name_the_loss_only_when_it_is_not_cross_entropy():
    from workflow_runner import plan_of

    plan = plan_of({"train": {"loss": ["cross_entropy", "mse", "mine"]},
                    "losses": {"mine": {"name": "custom", "entry_point": "custom_losses:torch_log_cosh"}}})
    base = "digits-lenet-lr0.05-bs64-e6-m0.9-s"
    assert sorted(plan.runs) == sorted(f"{base}{seed}{suffix}" for seed in (0, 1) for suffix in ("", "-mine", "-mse"))
    assert plan.runs[f"{base}0-mse"]["settings"]["loss"] == "mse"
    assert sorted(plan_of({}).runs) == [f"{base}0", f"{base}1"]  # the ids they always had
