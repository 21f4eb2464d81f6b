"""The backend contract: every framework backend passes this one suite, parametrized by backend and model.

Each backend is reached only through the registry (``backend(name)``) and the ``Objective``/``HessianOperator``
protocols, in float64 on the CPU: a run config and a one-checkpoint trajectory are written for a tiny model the
backend builds, and ``objective_for_trajectory`` gives the objective over 30 digits samples. The truths are
independent of the objective: a numpy cross-entropy of the model's own logits, central finite differences, the dense
Hessian assembled from products (symmetry, eigenpairs), the model's own tensors, the stored buffers, and the same
quantities at other batch sizes.

How a new backend joins the suite: register it (``gradvis_steps.backends.register_backend``) and add a case adapter
to ``contract_cases.CASES`` (a factory returning a :class:`contract_cases.BackendCase`: the model's named parameters,
its flat buffers, its own forward pass, a CPU device name, and a way to move its batch-norm statistics). The factory
calls ``pytest.importorskip`` on its framework, so where the framework is missing its cases are skipped with the
reason printed (``pytest -rs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from contract_cases import CASES, CUSTOM_LOSSES, MODELS, BackendCase

from gradvis_steps.backends import Backend, backend
from gradvis_steps.core.layout import KINDS, WEIGHT_KINDS, ParameterLayout
from gradvis_steps.core.objective import HessianOperator, Objective, batched_evaluation
from gradvis_steps.storage.trajectory import Trajectory, TrajectoryWriter

FRACTION = 0.02  # 30 of the digits training samples
BATCH = 7  # 30 = 4 * 7 + 2: an uneven last batch
FD_STEP = 1e-5


@dataclass
class Setup:
    """One backend and model: the user's model, its trajectory and an objective at ``BATCH``."""

    case: BackendCase
    backend: Backend
    model_name: str
    model: Any
    path: Any
    dataset: Any
    x: np.ndarray
    y: np.ndarray
    buffer_layout: list[dict]
    buffers: np.ndarray
    objective: Objective

    def make_objective(self, batch_size: int = BATCH) -> Objective:
        with Trajectory(self.path) as trajectory:
            return self.backend.objective_for_trajectory(
                trajectory, fraction=FRACTION, subset_seed=0, batch_size=batch_size, device=self.case.device,
                dtype="float64", dataset=self.dataset)

    def theta(self) -> np.ndarray:
        return self.objective.to_numpy(self.objective.initial_point())


@pytest.fixture(scope="module", params=[(b, m) for b in CASES for m in MODELS], ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request, digits, tmp_path_factory) -> Setup:
    backend_name, model_name = request.param
    case = CASES[backend_name]()
    chosen = backend(backend_name)
    config = {"framework": backend_name, "model": MODELS[model_name], "dataset": {"name": "digits"},
              "train": {"seed": 0}}
    model = chosen.build_model(config, digits)
    x, y = digits.evaluation_subset(FRACTION, 0)
    case.warm_buffers(model, digits.x_train[:48])  # batch-norm statistics off their defaults (0 and 1)
    layout = chosen.parameter_layout(model)
    buffer_layout = chosen.buffer_layout(model)
    buffers = np.asarray(case.flat_buffers(model), dtype=np.float64)
    named = case.named_parameters(model)
    params = np.concatenate([named[spec.name].reshape(-1) for spec in layout])
    path = tmp_path_factory.mktemp(f"{backend_name}-{model_name}") / "trajectory.h5"
    writer = TrajectoryWriter(path, layout, buffer_layout, config, {})
    writer.append(params, buffers, iteration=0, epoch=0, batch_loss=float("nan"))
    writer.commit()
    result = Setup(case, chosen, model_name, model, path, digits, x, y, buffer_layout, buffers, None)
    result.objective = result.make_objective()
    return result


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _hvp(objective: Objective, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
    return objective.to_numpy(objective.hvp(objective.from_numpy(theta), objective.from_numpy(v)))


def _grad(objective: Objective, theta: np.ndarray) -> np.ndarray:
    return objective.to_numpy(objective.grad(objective.from_numpy(theta)))


def _loss(objective: Objective, theta: np.ndarray) -> float:
    return objective.loss(objective.from_numpy(theta))


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


# -- the protocols ----------------------------------------------------------------------------------------------

def test_the_objective_and_its_operator_implement_the_protocols(setup):
    objective = setup.objective
    assert isinstance(objective, Objective)
    theta = objective.initial_point()
    assert isinstance(objective.hvp_operator(theta), HessianOperator)
    assert objective.dim == objective.layout.size
    assert isinstance(objective.device_type, str) and objective.device_type
    assert isinstance(objective.hvp_mode, str)
    host = _rng(0).standard_normal(objective.dim)
    back = objective.to_numpy(objective.from_numpy(host))
    assert back.dtype == np.float64 and np.array_equal(back, host)  # float64 round trip is exact


def test_calibrate_hvp_resolves_a_mode_with_the_same_products(setup):
    objective = setup.make_objective()
    theta = setup.theta()
    v = _rng(1).standard_normal(objective.dim)
    before = _hvp(objective, theta, v)
    record = objective.calibrate_hvp(objective.from_numpy(theta))
    assert isinstance(record, dict) and record["mode"] == objective.hvp_mode != "auto"
    assert _relative(_hvp(objective, theta, v), before) <= 1e-10


# -- loss --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [0.0, 0.05])
def test_loss_is_the_mean_cross_entropy_of_the_models_own_logits(setup, shift):
    theta = setup.theta() + shift * _rng(2).standard_normal(setup.objective.dim)
    logits = setup.case.logits(setup.model, theta, setup.x)
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    expected = float(np.mean(log_z - logits[np.arange(len(setup.y)), setup.y]))
    evaluation = setup.objective.evaluate(setup.objective.from_numpy(theta))
    assert evaluation.loss == pytest.approx(expected, rel=1e-12)
    assert evaluation.accuracy == pytest.approx(float(np.mean(logits.argmax(axis=1) == setup.y)), abs=1e-12)
    assert _loss(setup.objective, theta) == pytest.approx(evaluation.loss, rel=1e-14)


def test_batched_evaluation_when_offered_equals_point_by_point(setup):
    objective = setup.objective
    evaluate_many = batched_evaluation(objective)
    if evaluate_many is None:
        pytest.skip(f"{setup.case.name} objectives do not offer batched evaluation (optional)")
    rng = _rng(3)
    center = setup.theta()
    directions = [0.1 * rng.standard_normal(objective.dim) for _ in range(2)]
    coeffs = np.array([[0.0, 0.0], [1.0, -0.5], [-0.3, 0.7]])
    got = evaluate_many(objective.from_numpy(center), [objective.from_numpy(d) for d in directions], coeffs)
    for row, evaluation in zip(coeffs, got, strict=True):
        point = center + row[0] * directions[0] + row[1] * directions[1]
        expected = objective.evaluate(objective.from_numpy(point))
        assert evaluation.loss == pytest.approx(expected.loss, rel=1e-12)
        assert evaluation.accuracy == pytest.approx(expected.accuracy, abs=1e-12)


# -- derivatives against finite differences and the dense Hessian -----------------------------------------------

def test_gradient_matches_central_differences_of_the_loss(setup):
    objective, theta = setup.objective, setup.theta()
    g = _grad(objective, theta)
    rng = _rng(4)
    for _ in range(3):
        d = rng.standard_normal(objective.dim)
        d /= np.linalg.norm(d)
        fd = (_loss(objective, theta + FD_STEP * d) - _loss(objective, theta - FD_STEP * d)) / (2 * FD_STEP)
        assert fd == pytest.approx(float(g @ d), rel=1e-6, abs=1e-9 * np.linalg.norm(g))


def test_hvp_matches_central_differences_of_the_gradient(setup):
    objective, theta = setup.objective, setup.theta()
    rng = _rng(5)
    for _ in range(2):
        v = rng.standard_normal(objective.dim)
        v /= np.linalg.norm(v)
        fd = (_grad(objective, theta + FD_STEP * v) - _grad(objective, theta - FD_STEP * v)) / (2 * FD_STEP)
        assert _relative(fd, _hvp(objective, theta, v)) <= 1e-6


@pytest.fixture(scope="module")
def dense(setup) -> np.ndarray:
    """The Hessian at the initial point, row block by row block through ``hvp_operator(theta).matmat``."""
    objective = setup.objective
    operator = objective.hvp_operator(objective.initial_point())
    eye = np.eye(objective.dim)
    rows = [objective.to_numpy(operator.matmat(objective.from_numpy(eye[i:i + 128])))
            for i in range(0, objective.dim, 128)]
    return np.concatenate(rows)


def test_the_dense_hessian_is_symmetric_and_its_eigenpairs_are_hvp_eigenpairs(setup, dense):
    objective, theta = setup.objective, setup.theta()
    scale = np.abs(dense).max()
    assert np.abs(dense - dense.T).max() <= 1e-10 * scale
    values, vectors = np.linalg.eigh((dense + dense.T) / 2)
    for k in (0, 1, -2, -1):  # the extreme pairs Lanczos looks for
        u = vectors[:, k]
        hu = _hvp(objective, theta, u)
        assert np.linalg.norm(hu - values[k] * u) <= 1e-9 * np.abs(values).max()
        assert float(u @ hu) == pytest.approx(values[k], abs=1e-10 * np.abs(values).max())


def test_hvp_operator_and_matmat_equal_hvp_and_the_dense_hessian(setup, dense):
    objective, theta = setup.objective, setup.theta()
    V = _rng(6).standard_normal((3, objective.dim))
    operator = objective.hvp_operator(objective.from_numpy(theta))
    block = objective.to_numpy(operator.matmat(objective.from_numpy(V)))
    assert block.shape == V.shape
    for v, row in zip(V, block, strict=True):
        expected = _hvp(objective, theta, v)
        assert _relative(expected, dense @ v) <= 1e-10
        assert _relative(objective.to_numpy(operator(objective.from_numpy(v))), expected) <= 1e-10
        assert _relative(row, expected) <= 1e-10


# -- batch-size independence -------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 4, 11, 30])
def test_loss_gradient_and_hvp_do_not_depend_on_the_batch_size(setup, batch_size):
    other = setup.make_objective(batch_size)
    theta = setup.theta()
    v = _rng(7).standard_normal(other.dim)
    assert _loss(other, theta) == pytest.approx(_loss(setup.objective, theta), rel=1e-12)
    assert _relative(_grad(other, theta), _grad(setup.objective, theta)) <= 1e-10
    assert _relative(_hvp(other, theta, v), _hvp(setup.objective, theta, v)) <= 1e-10


# -- layout ------------------------------------------------------------------------------------------------------

#: the kinds each model's layout must hold (a batch-norm network has batchnorm parameters, ...)
EXPECTED_KINDS = {"lenet": {"conv", "linear", "bias"}, "mlp": {"linear", "bias"},
                  "resnet-bn": {"conv", "batchnorm", "linear", "bias"}}


def test_the_layout_is_contiguous_and_round_trips(setup):
    layout = setup.objective.layout
    assert setup.backend.parameter_layout(setup.model) == layout
    assert ParameterLayout.from_json(layout.to_json()) == layout
    offset = 0
    for spec in layout:
        assert spec.offset == offset and spec.numel == int(np.prod(spec.shape)) > 0
        offset += spec.numel
    assert offset == layout.size == setup.objective.dim
    assert {spec.kind for spec in layout} == EXPECTED_KINDS[setup.model_name]
    vector = _rng(8).standard_normal(layout.size)
    pieces = [vector[spec.slice].reshape(spec.shape) for spec in layout]
    assert np.array_equal(np.concatenate([p.reshape(-1) for p in pieces]), vector)


def test_filter_axes_and_kinds_are_as_the_layout_documents(setup):
    specs = list(setup.objective.layout)
    for spec, following in zip(specs, [*specs[1:], None], strict=True):
        assert spec.kind in KINDS
        if spec.kind in WEIGHT_KINDS:
            assert spec.filter_axis is not None and len(spec.shape) >= 2
            # the output units: as many as the bias or batch-norm scale that follows the weight
            if following is not None and following.kind in ("bias", "batchnorm"):
                assert spec.n_filters == following.numel, (spec, following)
        else:
            assert spec.filter_axis is None and spec.n_filters == 1, spec
    last_weight = [spec for spec in specs if spec.kind in WEIGHT_KINDS][-1]
    assert last_weight.kind == "linear" and last_weight.n_filters == setup.dataset.num_classes


def test_initial_point_is_the_models_parameters_split_by_the_layout(setup):
    named = setup.case.named_parameters(setup.model)
    theta = setup.theta()
    assert set(named) == {spec.name for spec in setup.objective.layout}
    for spec in setup.objective.layout:
        assert np.array_equal(theta[spec.slice].reshape(spec.shape), named[spec.name]), spec.name


# -- buffers -----------------------------------------------------------------------------------------------------

def test_buffers_change_the_loss_of_batch_norm_models_and_restore_bitwise(setup):
    objective = setup.make_objective()
    theta = objective.from_numpy(setup.theta())
    loss, grad = objective.loss(theta), objective.to_numpy(objective.grad(theta))
    scaled, offset = setup.buffers.copy(), 0
    for entry in setup.buffer_layout:
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if "float" in entry["dtype"]:
            scaled[offset:offset + count] *= 1.5
        offset += count
    assert offset == len(setup.buffers)
    objective.set_buffers(scaled, setup.buffer_layout)
    if setup.model_name == "resnet-bn":
        assert len(setup.buffers) > 0
        assert abs(objective.loss(theta) - loss) > 1e-6 * abs(loss)
    else:
        assert len(setup.buffers) == 0 and objective.loss(theta) == loss
    objective.set_buffers(setup.buffers, json.dumps(setup.buffer_layout))  # the stored (JSON) form
    assert objective.loss(theta) == loss
    assert np.array_equal(objective.to_numpy(objective.grad(theta)), grad)


# -- losses ------------------------------------------------------------------------------------------------------
# Every loss in every backend, on an mlp over 30 diabetes samples in batches of 7 (an uneven last batch), float64.
# The truths: the loss of the model's own outputs in numpy, and the gradient and dense Hessian that
# torch.autograd.functional.hessian takes of an independent torch re-implementation of the mlp (from the layout and
# the flat vector, its output checked against the model's own forward pass) and of the loss (written out below).

LOSS_NAMES = ("cross_entropy", "mse", "bce_with_logits", "custom")
LOSS_FRACTION = 30 / 400  # 30 of the 400 diabetes training samples


def _loss_dataset(name: str):
    """Diabetes features with targets of the kind the loss takes: 3 classes, binary labels, the float target, two
    float targets."""
    from gradvis_steps.data import ArrayDataset, load_dataset

    base = load_dataset("diabetes")
    t = base.y_train
    targets = {"cross_entropy": (np.digitize(t, np.quantile(t, [1 / 3, 2 / 3])).astype(np.int64), 3),
               "bce_with_logits": ((t > 0).astype(np.int64), 1),
               "mse": (t, 1),
               "custom": (np.stack([t, 0.5 * t**2 - 0.5], axis=1), 2)}[name]
    return ArrayDataset(f"diabetes-{name}", base.x_train, targets[0], targets[1])


def _numpy_losses(name: str, z: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    if name == "cross_entropy":
        top = z.max(axis=1, keepdims=True)
        return np.log(np.exp(z - top).sum(axis=1)) + top[:, 0] - z[np.arange(len(y)), y]
    t = y.reshape(len(y), -1).astype(np.float64)
    if name == "mse":
        return ((z - t) ** 2).mean(axis=1)
    if name == "bce_with_logits":
        return (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).mean(axis=1)
    return (scale * np.log(np.cosh((z - t) / scale))).sum(axis=1)


def _torch_losses(torch, name: str, z, y, scale: float):  # noqa: ANN001, ANN202 (torch imported lazily)
    if name == "cross_entropy":
        top = z.max(dim=1, keepdim=True).values
        return torch.log(torch.exp(z - top).sum(dim=1)) + top[:, 0] - z[torch.arange(len(y)), y]
    t = y.reshape(len(y), -1).to(torch.float64)
    if name == "mse":
        return ((z - t) ** 2).mean(dim=1)
    if name == "bce_with_logits":
        return (torch.clamp(z, min=0) - z * t + torch.log1p(torch.exp(-z.abs()))).mean(dim=1)
    return (scale * torch.log(torch.cosh((z - t) / scale))).sum(dim=1)


def _torch_mlp(torch, layout: ParameterLayout, theta, x):  # noqa: ANN001, ANN202
    """The mlp's forward pass from the flat vector alone: weight (y = x W, or x W^T where the output units are the
    first axis) and bias pairs in layout order, ReLU between them."""
    specs = list(layout)
    pairs = list(zip(specs[0::2], specs[1::2], strict=True))
    h = x.reshape(len(x), -1)
    for index, (weight, bias) in enumerate(pairs):
        w = theta[weight.slice].view(weight.shape)
        h = h @ (w if weight.filter_axis % 2 == 1 else w.T) + theta[bias.slice]
        if index < len(pairs) - 1:
            h = torch.relu(h)
    return h


@dataclass
class LossSetup:
    case: BackendCase
    loss: dict
    model: Any
    objective: Objective
    x: np.ndarray
    y: np.ndarray
    theta: np.ndarray
    truth_grad: np.ndarray
    truth_hessian: np.ndarray


@pytest.fixture(scope="module", params=[(b, n) for b in CASES for n in LOSS_NAMES], ids=lambda p: f"{p[0]}-{p[1]}")
def loss_setup(request, tmp_path_factory) -> LossSetup:
    torch = pytest.importorskip("torch")
    backend_name, name = request.param
    case = CASES[backend_name]()
    chosen = backend(backend_name)
    dataset = _loss_dataset(name)
    loss = CUSTOM_LOSSES[backend_name] if name == "custom" else {"name": name}
    config = {"framework": backend_name, "model": MODELS["mlp"], "dataset": {"name": "diabetes"}, "loss": loss,
              "train": {"seed": 0}}
    model = chosen.build_model(config, dataset)
    layout = chosen.parameter_layout(model)
    named = case.named_parameters(model)
    params = np.concatenate([named[spec.name].reshape(-1) for spec in layout])
    path = tmp_path_factory.mktemp(f"loss-{backend_name}-{name}") / "trajectory.h5"
    writer = TrajectoryWriter(path, layout, chosen.buffer_layout(model), config, {})
    writer.append(params, np.zeros(0), iteration=0, epoch=0, batch_loss=float("nan"))
    writer.commit()
    with Trajectory(path) as trajectory:
        objective = chosen.objective_for_trajectory(trajectory, fraction=LOSS_FRACTION, subset_seed=0,
                                                    batch_size=BATCH, device=case.device, dtype="float64",
                                                    dataset=dataset)
    x, y = dataset.evaluation_subset(LOSS_FRACTION, 0)
    assert len(x) == 30 and objective.n_samples == 30
    theta = params + 0.1 * _rng(9).standard_normal(len(params))  # off the initial point: outputs of every sign
    scale = float(loss.get("scale", 1.0))
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)
    outputs = _torch_mlp(torch, layout, torch.as_tensor(theta), xt).numpy()
    assert np.abs(outputs - case.logits(model, theta, x)).max() <= 1e-12 * np.abs(outputs).max()

    def mean_loss(t):  # noqa: ANN001, ANN202
        return _torch_losses(torch, name, _torch_mlp(torch, layout, t, xt), yt, scale).mean()

    point = torch.as_tensor(theta).requires_grad_(True)
    (grad,) = torch.autograd.grad(mean_loss(point), point)
    hessian = torch.autograd.functional.hessian(mean_loss, torch.as_tensor(theta))
    return LossSetup(case, loss, model, objective, x, y, theta, grad.numpy(), hessian.numpy())


def test_each_loss_and_accuracy_equal_numpy_of_the_models_own_outputs(loss_setup):
    s = loss_setup
    z = s.case.logits(s.model, s.theta, s.x)
    expected = float(np.mean(_numpy_losses(s.loss["name"], z, s.y, float(s.loss.get("scale", 1.0)))))
    evaluation = s.objective.evaluate(s.objective.from_numpy(s.theta))
    assert evaluation.loss == pytest.approx(expected, rel=1e-12)
    if s.loss["name"] == "cross_entropy":
        assert evaluation.accuracy == pytest.approx(float(np.mean(z.argmax(axis=1) == s.y)), abs=1e-12)
    elif s.loss["name"] == "bce_with_logits":
        assert evaluation.accuracy == pytest.approx(float(np.mean((z[:, 0] > 0) == (s.y == 1))), abs=1e-12)
        assert 0 < evaluation.accuracy < 1
    else:
        assert np.isnan(evaluation.accuracy)  # no classes: accuracy means nothing


def test_each_loss_gradient_equals_the_independent_one(loss_setup):
    s = loss_setup
    assert _relative(_grad(s.objective, s.theta), s.truth_grad) <= 1e-10


@pytest.mark.parametrize("mode", ["double_backprop", "forward_over_reverse"])
def test_each_loss_hessian_products_equal_the_independent_dense_hessian(loss_setup, mode):
    s = loss_setup
    objective = s.objective
    objective.hvp_mode = mode
    H = s.truth_hessian
    V = _rng(10).standard_normal((3, objective.dim))
    operator = objective.hvp_operator(objective.from_numpy(s.theta))
    block = objective.to_numpy(operator.matmat(objective.from_numpy(V)))
    for v, row in zip(V, block, strict=True):
        assert _relative(_hvp(objective, s.theta, v), H @ v) <= 1e-10
        assert _relative(objective.to_numpy(operator(objective.from_numpy(v))), H @ v) <= 1e-10
        assert _relative(row, H @ v) <= 1e-10
    eye = np.eye(objective.dim)
    dense = objective.to_numpy(operator.matmat(objective.from_numpy(eye)))
    assert np.abs(dense - H).max() <= 1e-10 * np.abs(H).max()


def test_each_loss_batched_evaluation_equals_point_by_point(loss_setup):
    objective = loss_setup.objective
    evaluate_many = batched_evaluation(objective)
    if evaluate_many is None:
        pytest.skip(f"{loss_setup.case.name} objectives do not offer batched evaluation (optional)")
    rng = _rng(11)
    directions = [0.1 * rng.standard_normal(objective.dim) for _ in range(2)]
    coeffs = np.array([[0.0, 0.0], [1.0, -0.5], [-0.3, 0.7]])
    modes = ["per_point", "vmap"] if hasattr(objective, "grid_batching_mode") else [None]
    for mode in modes:
        if mode is not None:
            objective.grid_batching_mode = mode
        got = evaluate_many(objective.from_numpy(loss_setup.theta), [objective.from_numpy(d) for d in directions],
                            coeffs)
        for row, evaluation in zip(coeffs, got, strict=True):
            point = loss_setup.theta + row[0] * directions[0] + row[1] * directions[1]
            expected = objective.evaluate(objective.from_numpy(point))
            assert evaluation.loss == pytest.approx(expected.loss, rel=1e-12), mode
            np.testing.assert_allclose(evaluation.accuracy, expected.accuracy, atol=1e-12)  # NaN equals NaN
