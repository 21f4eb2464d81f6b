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
from contract_cases import CASES, MODELS, BackendCase

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
