"""Parity of the TensorFlow backend with the torch backend, the second implementation of the same objective.

The same weights (torch's, converted: conv kernels OIHW -> HWIO, dense kernels transposed, the first dense layer's
inputs reordered from torch's CHW flattening to Keras' HWC) and the same eval-mode batch-norm statistics are loaded
into the torch and the Keras LeNet, MLP and ResNet-20; the two objectives must then agree on the loss, the gradient
and Hessian-vector products (the conversion is a permutation P of the flat vector, so ``g_tf = P g_torch`` and
``H_tf P v = P H_torch v``), the top Ritz values, and a landscape grid. Skipped where TensorFlow is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

tf = pytest.importorskip("tensorflow", reason="the tensorflow backend needs TensorFlow (the 'tensorflow' extra)")

from tf_helpers import few_tf_threads  # noqa: E402

few_tf_threads()

from gradvis_steps.backends import backend  # noqa: E402
from gradvis_steps.backends.tensorflow import TFObjective, model_for  # noqa: E402
from gradvis_steps.backends.tensorflow.flat import load_buffers, load_flat_parameters  # noqa: E402
from gradvis_steps.backends.torch import TorchObjective  # noqa: E402
from gradvis_steps.backends.torch import model_for as torch_model_for  # noqa: E402
from gradvis_steps.backends.torch.flat import flatten_parameters, layout_of  # noqa: E402
from gradvis_steps.core.grid import evaluate_points  # noqa: E402
from gradvis_steps.core.lanczos import ritz_pairs  # noqa: E402
from gradvis_steps.core.slq import starting_vector  # noqa: E402

#: the models, as run configs name them, and the (C, H, W) feature map their first dense layer flattens
MODELS: dict[str, dict[str, Any]] = {
    "lenet": {"name": "lenet", "widths": [2, 3, 8, 6]},
    "mlp": {"name": "mlp", "hidden": [8]},
    "resnet20": {"name": "resnet20", "width": 2},
}
FRACTION, BATCH = 0.02, 7  # 30 digits samples in batches of 7, 7, 7, 7, 2
#: relative tolerances of gradient and Hessian-vector products (the issue's), per dtype
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def _flatten_order(model_name: str, torch_model: torch.nn.Module) -> tuple[int, int, int] | None:
    """The (C, H, W) map the first dense layer of the torch model flattens (None: the MLP on 1-channel inputs and
    ResNet's pooled features, where CHW and HWC orders coincide)."""
    if model_name != "lenet":
        return None
    c2 = torch_model.conv2.out_channels
    side = int(round((torch_model.fc1.in_features // c2) ** 0.5))
    return c2, side, side


def tf_name(torch_name: str, kind: str) -> str:
    """The Keras variable path of a torch parameter or buffer of these models (``layers.3.shortcut.1.weight`` ->
    ``layers3_shortcut_bn/gamma``, the MLP's ``net.3.weight`` -> ``fc1/kernel``)."""
    module, _, leaf = torch_name.rpartition(".")
    mlp = re.fullmatch(r"net\.(\d+)", module)
    if mlp:
        module = f"fc{(int(mlp.group(1)) - 1) // 2}"
    module = re.sub(r"^layers\.(\d+)\.", r"layers\1_", module)
    module = module.replace("shortcut.0", "shortcut_conv").replace("shortcut.1", "shortcut_bn")
    names = {"weight": "gamma" if kind == "batchnorm" else "kernel", "bias": "beta" if kind == "batchnorm" else "bias",
             "running_mean": "moving_mean", "running_var": "moving_variance"}
    return f"{module}/{names[leaf]}"


def torch_to_tf(values: np.ndarray, torch_layout: Any, tf_layout: Any, flatten: tuple[int, int, int] | None
                ) -> np.ndarray:
    """A flat vector of the torch layout in the Keras layout (tensors matched by name, transposed, reordered)."""
    out = np.full(tf_layout.size, np.nan, dtype=values.dtype)
    first_linear = True
    for spec in torch_layout:
        target = tf_layout[tf_name(spec.name, spec.kind)]
        assert spec.kind == target.kind, (spec, target)
        piece = values[spec.slice].reshape(spec.shape)
        if spec.kind == "conv":
            piece = piece.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        elif spec.kind == "linear":
            if first_linear and flatten is not None:  # torch flattens (C, H, W), Keras (H, W, C)
                piece = piece.reshape(spec.shape[0], *flatten).transpose(0, 2, 3, 1).reshape(spec.shape)
            first_linear = False
            piece = piece.T  # (out, in) -> (in, out)
        assert piece.shape == target.shape, (spec, target)
        out[target.slice] = piece.reshape(-1)
    assert not np.isnan(out).any()  # every Keras variable was given a value
    return out


@dataclass
class Pair:
    """The torch and the TF objective of one model with the same weights and statistics, and the conversion."""

    torch: TorchObjective
    tf: TFObjective
    theta: np.ndarray  # torch layout, float64 values of the float32 weights
    convert: Any  # torch-layout vector -> TF-layout vector


def make_pair(model_name: str, dtype: str, digits: Any) -> Pair:
    config = {"model": MODELS[model_name], "dataset": {"name": "digits"}, "train": {"seed": 0}}
    torch_model = torch_model_for(config, digits)
    torch_model.train()
    with torch.no_grad():  # batch-norm statistics off their defaults
        for start in range(0, 48, 8):
            torch_model(torch.as_tensor(digits.x_train[start:start + 8]))
    torch_model.eval()
    x, y = digits.evaluation_subset(FRACTION, 0)
    torch_objective = TorchObjective(torch_model, x, y, batch_size=BATCH, dtype=getattr(torch, dtype))

    tf_model = model_for({**config, "framework": "tensorflow"}, digits, dtype)
    torch_layout, tf_layout = layout_of(torch_model), backend("tensorflow").parameter_layout(tf_model)
    flatten = _flatten_order(model_name, torch_model)

    def convert(vector: np.ndarray) -> np.ndarray:
        return torch_to_tf(np.asarray(vector), torch_layout, tf_layout, flatten)

    theta = flatten_parameters(torch_model).double().numpy()
    load_flat_parameters(tf_model, convert(theta))
    statistics = {tf_name(name, "batchnorm"): b.double().numpy() for name, b in torch_model.named_buffers()
                  if not name.endswith("num_batches_tracked")}
    tf_buffers = backend("tensorflow").buffer_layout(tf_model)
    assert sorted(e["name"] for e in tf_buffers) == sorted(statistics)
    if statistics:
        load_buffers(tf_model, np.concatenate([statistics[e["name"]].reshape(-1) for e in tf_buffers]), tf_buffers)
    tf_objective = TFObjective(tf_model, x, y, batch_size=BATCH, dtype=dtype)
    return Pair(torch_objective, tf_objective, theta, convert)


@pytest.fixture(scope="module", params=[(m, d) for m in MODELS for d in ("float32", "float64")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, digits) -> Pair:
    return make_pair(*request.param, digits)


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def _torch(pair: Pair, vector: np.ndarray) -> torch.Tensor:
    return pair.torch.from_numpy(vector)


def test_loss_and_accuracy_agree(pair):
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.05):
        theta = pair.theta + shift * rng.standard_normal(len(pair.theta))
        expected = pair.torch.evaluate(_torch(pair, theta))
        got = pair.tf.evaluate(pair.tf.from_numpy(pair.convert(theta)))
        rel = 1e-6 if pair.tf.dtype == "float32" else 1e-12
        assert got.loss == pytest.approx(expected.loss, rel=rel)
        assert got.accuracy == expected.accuracy


def test_gradients_agree(pair):
    expected = pair.convert(pair.torch.to_numpy(pair.torch.grad(_torch(pair, pair.theta))).astype(np.float64))
    got = pair.tf.grad(pair.tf.from_numpy(pair.convert(pair.theta))).astype(np.float64)
    assert _relative(got, expected) <= TOLERANCE[pair.tf.dtype]


def test_hessian_vector_products_agree(pair):
    v = np.random.default_rng(1).standard_normal(len(pair.theta))
    expected = pair.convert(pair.torch.to_numpy(pair.torch.hvp(_torch(pair, pair.theta), _torch(pair, v))))
    operator = pair.tf.hvp_operator(pair.tf.from_numpy(pair.convert(pair.theta)))
    got = operator(pair.tf.from_numpy(pair.convert(v)))
    assert _relative(got.astype(np.float64), expected.astype(np.float64)) <= TOLERANCE[pair.tf.dtype]
    counts = pair.tf.tracing_counts()  # batches of 7 and 2, several calls: each function traced once
    assert counts["hvp_forward_over_reverse"] == 1 and max(counts.values()) == 1, counts


def test_top_ritz_values_agree(pair):
    if pair.tf.dtype != "float64":
        pytest.skip("Lanczos runs compared in float64 (float32 rounding compounds over the steps)")
    v0 = starting_vector(len(pair.theta), seed=3, index=0)
    m = min(30, len(pair.theta))
    expected = ritz_pairs(pair.torch.hvp_operator(_torch(pair, pair.theta)), pair.torch.from_numpy(v0), m, 3)
    tf_theta = pair.tf.from_numpy(pair.convert(pair.theta))
    got = ritz_pairs(pair.tf.hvp_operator(tf_theta), pair.tf.from_numpy(pair.convert(v0)), m, 3)
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-8, atol=1e-10 * abs(expected.values[0]))


def test_a_landscape_grid_agrees(pair):
    rng = np.random.default_rng(2)
    directions = 0.1 * rng.standard_normal((2, len(pair.theta)))
    a = np.linspace(-1, 1, 3)
    points = np.stack(np.meshgrid(a, a, indexing="ij"), axis=-1).reshape(-1, 2)
    expected = evaluate_points(pair.torch, pair.theta, directions, points, progress=False)
    tf_directions = np.stack([pair.convert(d) for d in directions])
    got = evaluate_points(pair.tf, pair.convert(pair.theta), tf_directions, points, progress=False)
    rel = 1e-6 if pair.tf.dtype == "float32" else 1e-12
    np.testing.assert_allclose(got.loss, expected.loss, rtol=rel)
    np.testing.assert_array_equal(got.accuracy, expected.accuracy)


# ------------------------------------------------------------------------------------------------------ training
TRAINING = {"sgd": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05},
            "adam": {"optimizer": "adam", "lr": 0.01},
            "adamw": {"optimizer": "adamw", "lr": 0.01, "beta1": 0.8, "beta2": 0.99}}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(TRAINING))
def test_training_trajectories_agree(tmp_path, digits, monkeypatch, name, dtype):
    """The same MLP (torch's weights, converted), data and sample order trained by both backends, on a cosine
    schedule with warm-up and weight decay: the update rules are the same, so the checkpoints agree to rounding.
    Float64: the frameworks' sums differ in order only (1e-16 relative), far below the float32 rounding of the
    stored rows, so the rows agree to a unit in their last place (measured: bitwise). Float32: per-step rounding
    (1e-7 relative) carried over 10 steps: the tolerance of the SGD checks (rtol 1e-5, atol 1e-6; measured: at most
    4.5e-8 apart, against steps of 1e-2)."""
    from gradvis_steps.backends.tensorflow import training as tf_training
    from gradvis_steps.backends.torch.training import epoch_permutation
    from gradvis_steps.core.training import TrainSettings
    from gradvis_steps.data.base import ArrayDataset
    from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter

    data = ArrayDataset("digits", digits.x_train[:60].astype(dtype), digits.y_train[:60], 10)
    settings = TrainSettings(epochs=2, batch_size=13, seed=3, schedule="cosine", warmup=3, min_lr=0.001,
                             weight_decay=0.01, **TRAINING[name])
    # both see torch's sample order (TensorFlow's own is numpy's permutation of the same seed)
    monkeypatch.setattr(tf_training, "epoch_permutation", lambda n, seed, epoch: epoch_permutation(n, seed, epoch)
                        .numpy())
    config = {"model": MODELS["mlp"], "dataset": {"name": "digits"}, "train": {"seed": 0}}
    torch_model = torch_model_for(config, digits).to(getattr(torch, dtype))
    tf_model = model_for({**config, "framework": "tensorflow"}, digits, dtype)
    torch_layout, tf_layout = layout_of(torch_model), backend("tensorflow").parameter_layout(tf_model)
    load_flat_parameters(tf_model, torch_to_tf(flatten_parameters(torch_model).double().numpy(), torch_layout,
                                               tf_layout, None))
    rows = {}
    for framework, model in (("torch", torch_model), ("tensorflow", tf_model)):
        chosen = backend(framework)
        path = tmp_path / f"{framework}.h5"
        writer = TrajectoryWriter(path, chosen.parameter_layout(model), chosen.buffer_layout(model), {}, {})
        chosen.train(model, data, settings, writer, device=chosen.resolve_device("cpu"), progress=False)
        writer.commit()
        with Trajectory(path) as traj:
            rows[framework] = (traj.file["params"][()].astype(np.float64), traj.batch_loss.copy())
    expected = np.stack([torch_to_tf(row, torch_layout, tf_layout, None) for row in rows["torch"][0]])
    got = rows["tensorflow"][0]
    assert len(got) == 11 and np.abs(got[-1] - got[0]).max() > 5 * settings.min_lr  # it trained
    if dtype == "float64":  # equal to float32 rounding of the stored rows: at most a unit in the last place apart
        np.testing.assert_allclose(got, expected, rtol=2 * 2.0**-24, atol=1e-12)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows["tensorflow"][1][:-1], rows["torch"][1][:-1], rtol=1e-5)
