"""The Hessian engine on a real network: Lanczos Ritz pairs and SLQ of a small LeNet's loss on the digits,
against the exact dense Hessian built column by column (``H e_j``) and diagonalized by ``numpy.linalg.eigh``.

Both HVP implementations (forward-over-reverse and double backprop) are checked against their own dense
Hessian, against each other and against autograd's dense Hessian of an independently written loss. Float64
throughout; the evaluation batches are uneven (11 + 11 + 8)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch.func import functional_call

from gradvis_steps.backends.torch.models import LeNet
from gradvis_steps.backends.torch.objective import HVP_MODES, TorchObjective
from gradvis_steps.core.lanczos import ritz_pairs
from gradvis_steps.core.slq import slq, spectrum_summary, starting_vector

BATCH = 11
N_TOP, N_BOTTOM = 5, 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module():
    """One torch and one BLAS thread for the module fixtures too (a multi-threaded OpenBLAS eigh of 433 x 433
    can take seconds on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest and does not fight other processes for the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def network(digits):
    """LeNet (widths 2, 3, 8, 6: 433 parameters) at its seeded initial point, 30 samples, per HVP mode: the
    objective and the dense Hessian from ``dim`` HVPs with the unit vectors."""
    x, y = digits.evaluation_subset(0.02, seed=3)
    assert len(x) % BATCH != 0  # the last batch is smaller than the others
    torch.manual_seed(0)
    model = LeNet((1, 8, 8), 10, widths=(2, 3, 8, 6))
    objectives, hessians = {}, {}
    for mode in HVP_MODES:
        objective = TorchObjective(model, x, y, batch_size=BATCH, dtype=torch.float64, hvp_mode=mode)
        theta = objective.initial_point()
        eye = torch.eye(objective.dim, dtype=torch.float64)
        hessians[mode] = torch.stack([objective.hvp(theta, eye[j]) for j in range(objective.dim)], dim=1).numpy()
        objectives[mode] = (objective, theta)
    return {"objectives": objectives, "hessians": hessians, "reference": reference_hessian(model, x, y, theta)}


def reference_hessian(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, theta: torch.Tensor) -> np.ndarray:
    """Autograd's dense Hessian of the full-batch mean loss, with the flat vector split by ``parameters()``
    order here (not by the package's layout)."""
    module = copy.deepcopy(model).double().eval()
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    assert torch.equal(flat, theta)
    shapes = [(name, p.shape) for name, p in module.named_parameters()]
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)

    def loss(t: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in shapes:
            params[name] = t[offset:offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return F.cross_entropy(functional_call(module, params, (xt,)), yt)

    return torch.autograd.functional.hessian(loss, flat, vectorize=True).numpy()


@pytest.fixture(scope="module")
def exact(network):
    """Eigen-decomposition of the (symmetrized) dense Hessian of the double-backprop mode."""
    H = network["hessians"]["double_backprop"]
    values, vectors = np.linalg.eigh(0.5 * (H + H.T))
    return {"values": values, "vectors": vectors, "norm": float(np.abs(values).max())}


def test_dense_hessian_is_symmetric_and_both_modes_agree(network):
    hessians = network["hessians"]
    for mode, H in hessians.items():
        assert H.shape == (433, 433)
        scale = np.linalg.norm(H)
        assert scale > 1e-3, mode  # a real, non-trivial curvature
        assert np.linalg.norm(H - H.T) <= 1e-12 * scale, mode
    a, b = (hessians[mode] for mode in HVP_MODES)
    assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(a)
    reference = network["reference"]  # one batch of 30 vs. 11 + 11 + 8 weighted by size: the same mean
    assert np.linalg.norm(a - reference) <= 1e-12 * np.linalg.norm(reference)


def test_spectrum_has_both_signs(exact):
    """At the initial point the Hessian is indefinite: 'smallest' means genuinely negative eigenvalues."""
    values = exact["values"]
    assert values[0] < -0.1 * exact["norm"] and values[-1] > 0.1 * exact["norm"]


@pytest.mark.parametrize("mode", HVP_MODES)
def test_ritz_pairs_match_dense_eigh(network, exact, mode):
    objective, theta = network["objectives"][mode]
    H = network["hessians"][mode]
    values, vectors, scale = exact["values"], exact["vectors"], exact["norm"]
    dim = objective.dim
    v0 = starting_vector(dim, 7, 0, like=theta)

    cache: dict[bytes, torch.Tensor] = {}

    def matvec(v):  # the second Lanczos run (same v0, same arithmetic) reuses the first run's exact HVPs
        key = v.numpy().tobytes()
        if key not in cache:
            cache[key] = objective.hvp(theta, v)
        return cache[key]

    top = ritz_pairs(matvec, v0, dim, N_TOP, which="largest")
    bottom = ritz_pairs(matvec, v0, dim, N_BOTTOM, which="smallest")
    assert len(cache) == dim + N_TOP + N_BOTTOM  # the runs were identical; residuals took fresh HVPs
    np.testing.assert_allclose(top.values, values[::-1][:N_TOP], rtol=1e-8, atol=1e-10 * scale)
    np.testing.assert_allclose(bottom.values, values[:N_BOTTOM], rtol=1e-8, atol=1e-10 * scale)
    assert np.all(np.diff(top.values) < 0) and np.all(np.diff(bottom.values) > 0)

    for pairs, true_index in ((top, dim - 1 - np.arange(N_TOP)), (bottom, np.arange(N_BOTTOM))):
        Y = pairs.vectors.numpy()
        np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, atol=1e-12)
        dense_residuals = np.linalg.norm(Y @ H - pairs.values[:, None] * Y, axis=1)  # H symmetric
        assert dense_residuals.max() <= 1e-8 * scale
        # the reported residuals are the true ones (HVP-based), equal to the dense-Hessian residuals
        np.testing.assert_allclose(pairs.residuals, dense_residuals, rtol=0, atol=1e-11 * scale)
        for y, value, residual, i in zip(Y, pairs.values, dense_residuals, true_index, strict=True):
            gap = np.min(np.abs(np.delete(values, i) - value))
            sin_angle = np.sqrt(max(0.0, 1.0 - float(vectors[:, i] @ y) ** 2))
            assert sin_angle <= residual / gap + 1e-7  # Davis-Kahan: the Ritz vector is the eigenvector


@pytest.mark.parametrize("mode", HVP_MODES)
def test_slq_on_network_against_dense_hessian(network, mode):
    """Hutchinson trace within 3 standard errors of trace(H); each quadrature reproduces the moments
    v^T H^p v of its starting vector (Gauss quadrature with m nodes is exact to degree 2m - 1)."""
    objective, theta = network["objectives"][mode]
    H = network["hessians"][mode]
    k, m, seed = 24, 3, 11
    result = slq(lambda v: objective.hvp(theta, v), objective.dim, k, m, seed=seed, like=theta)
    summary = spectrum_summary(result)
    trace = float(np.trace(H))
    assert abs(summary["trace_estimate"] - trace) <= 3 * summary["trace_stderr"]
    assert summary["trace_stderr"] < 0.5 * np.abs(np.linalg.eigvalsh(H)).sum()  # the bound says something
    scale = np.linalg.norm(H, 2)
    for i in range(k):
        v = starting_vector(objective.dim, seed, i)
        Hv = v
        for p in range(2 * m):
            moment = float(np.sum(result.weights[i] * result.nodes[i] ** p))
            assert abs(moment - float(v @ Hv)) <= 1e-9 * scale**p, (i, p)
            Hv = H @ Hv
        assert result.alpha1[i] == pytest.approx(float(v @ H @ v), rel=1e-9, abs=1e-12 * scale)
