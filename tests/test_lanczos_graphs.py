"""The torch backend's static-buffer Lanczos (one CUDA graph per step on a GPU) against independent truths.

On the CPU its step runs eagerly, the very code that is captured on a GPU (same buffers, same zero-padded row
buckets, the step index as a device tensor), so CI checks the mathematics; the CUDA tests (skipped here) check
that capture and replay change nothing and sync nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gradvis_steps.backends.torch import lanczos_graphs  # noqa: E402
from gradvis_steps.backends.torch.lanczos_graphs import clear_lanczos_graphs, graph_lanczos  # noqa: E402
from gradvis_steps.core.lanczos import lanczos, reference_only, register_kernel, tridiagonal_eigh  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N = 1500


@pytest.fixture(scope="module")
def problem():
    """A = Q diag(lam) Q^T: bulk in [-1, 3], five large outliers and three negative ones; exact eigh."""
    rng = np.random.default_rng(7)
    lam = np.concatenate([rng.uniform(-1.0, 3.0, N - 8), [120.0, 80.0, 50.0, 35.0, 20.0], [-12.0, -8.0, -5.0]])
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    return {"A": torch.from_numpy(A), "ev": np.linalg.eigvalsh(A), "v0": torch.from_numpy(rng.standard_normal(N))}


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_lanczos_graphs()
    yield
    clear_lanczos_graphs()


def _reference(matvec, v0: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference algorithm's alpha, beta (as tensors) and basis for one chain."""
    with reference_only():
        res = lanczos(matvec, v0, m, return_basis=True)
    return torch.from_numpy(res.alpha), torch.from_numpy(res.beta), res.basis


def _orth_error(V: torch.Tensor) -> float:
    Vn = V.cpu().numpy()
    return float(np.abs(Vn @ Vn.T - np.eye(Vn.shape[0])).max())


def test_extreme_ritz_values_residuals_and_orthogonality(problem):
    A, ev, v0 = problem["A"], problem["ev"], problem["v0"]
    alpha, beta, V = graph_lanczos(lambda v: A @ v, v0, 80, keep_basis=True)
    theta, U = tridiagonal_eigh(alpha.numpy(), beta.numpy())
    np.testing.assert_allclose(theta[::-1][:5], ev[::-1][:5], rtol=1e-8)
    np.testing.assert_allclose(theta[:3], ev[:3], rtol=1e-8)
    assert _orth_error(V) < 1e-10
    Y = torch.from_numpy(np.ascontiguousarray(U[:, [0, -1]].T)) @ V  # Ritz vectors of both ends
    for y, t in zip(Y, theta[[0, -1]], strict=True):
        assert float(torch.linalg.vector_norm(A @ y - t * y)) < 1e-6
    # the Lanczos relation V A V^T = T holds, so alpha and beta are the true coefficients
    T = np.diag(alpha.numpy()) + np.diag(beta.numpy(), 1) + np.diag(beta.numpy(), -1)
    np.testing.assert_allclose((V @ A @ V.T).numpy(), T, atol=1e-10)


@pytest.mark.parametrize("m", [1, 2, 8, 9, 17, 80, 95])
def test_agrees_with_the_generic_device_loop_at_every_bucket_edge(problem, m):
    """Zero-padded row buckets (8 rows here, 10 for m = 95) change nothing but rounding."""
    A, v0 = problem["A"], problem["v0"]
    alpha, beta, _ = graph_lanczos(lambda v: A @ v, v0, m)
    a_ref, b_ref, _ = _reference(lambda v: A @ v, v0, m)
    assert alpha.shape == (m,) and beta.shape == (m - 1,)
    np.testing.assert_allclose(alpha.numpy(), a_ref.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(beta.numpy(), b_ref.numpy(), rtol=0, atol=1e-12)


def test_breakdown_restarts_orthogonally_on_the_device():
    """Seven distinct eigenvalues: beta_6 = 0 exactly, the basis stays orthonormal, T has every eigenvalue."""
    d = torch.from_numpy(np.repeat(np.arange(7.0), 30))
    alpha, beta, V = graph_lanczos(lambda v: d * v, torch.ones_like(d), 20, keep_basis=True)
    b = beta.numpy()
    assert b[6] == 0.0 and np.all(b[:6] > 0.1)
    assert _orth_error(V) < 1e-10
    theta, _ = tridiagonal_eigh(alpha.numpy(), b)
    for value in range(7):
        assert np.abs(theta - value).min() < 1e-10


def test_zero_start_and_clamped_steps():
    d = torch.arange(1.0, 13.0, dtype=torch.float64)
    alpha, beta, V = graph_lanczos(lambda v: d * v, torch.zeros_like(d), 40, keep_basis=True)
    assert alpha.shape == (12,)  # m clamped to n
    theta, _ = tridiagonal_eigh(alpha.numpy(), beta.numpy())
    np.testing.assert_allclose(np.sort(theta), d.numpy(), atol=1e-10)
    assert _orth_error(V) < 1e-12


def test_buffers_reused_across_runs_without_leaking_state(problem):
    """The second run of a shape reuses the first one's buffers: its results equal a fresh run's bit for bit,
    and the basis handed out by the first run is not overwritten."""
    A, v0 = problem["A"], problem["v0"]
    first = graph_lanczos(lambda v: A @ v, v0, 30, keep_basis=True)
    kept = first[2].clone()
    other = torch.flip(v0, (0,))
    second = graph_lanczos(lambda v: A @ v, other, 30, keep_basis=True)
    assert len(lanczos_graphs._cache) == 1
    clear_lanczos_graphs()
    fresh = graph_lanczos(lambda v: A @ v, other, 30, keep_basis=True)
    for a, b in zip(second, fresh, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[2], kept)


def test_a_run_nested_in_the_matvec_does_not_share_the_buffers(problem):
    """Buffers are out of the cache while a run uses them: a run of the same shape inside the matvec (e.g. a
    preconditioner estimated by Lanczos) builds its own, and neither run's results change."""
    A, v0 = problem["A"], problem["v0"]
    other = torch.flip(v0, (0,))
    plain = graph_lanczos(lambda v: A @ v, v0, 30)
    inner_plain = graph_lanczos(lambda v: A @ v, other, 30)
    inner_alphas = []

    def nesting(v):
        inner_alphas.append(graph_lanczos(lambda u: A @ u, other, 30)[0])
        return A @ v

    nested = graph_lanczos(nesting, v0, 30)
    assert torch.equal(nested[0], plain[0]) and torch.equal(nested[1], plain[1])
    assert all(torch.equal(alpha, inner_plain[0]) for alpha in inner_alphas)


def test_lanczos_dispatches_single_chains_to_a_registered_kernel(problem):
    """``register_kernel`` routes the vectors its predicate accepts (later registrations first, so this one before
    the torch host kernel); blocks and other arrays do not reach it; the graph loop claims CUDA tensors only."""
    A, v0 = problem["A"], problem["v0"]
    assert not lanczos_graphs._on_cuda(v0)
    calls = []

    def spy(matvec, v, m, tol, keep):
        calls.append((m, tol, keep))
        return graph_lanczos(matvec, v, m, tol, keep)

    remove = register_kernel(lambda v: isinstance(v, torch.Tensor), spy)
    try:
        res = lanczos(lambda v: A @ v, v0, 25, return_basis=True)
        assert calls == [(25, np.finfo(np.float64).eps ** 0.75, True)] and res.basis.shape == (25, N)
        An = A.numpy()
        ref = lanczos(lambda v: An @ v, v0.numpy(), 25)  # numpy arrays: this kernel does not accept them
        lanczos(lambda v: A @ v, v0[None], 3)  # a block: the reference
        assert len(calls) == 1
    finally:
        remove()
    np.testing.assert_allclose(res.alpha, ref.alpha, atol=1e-12)
    lanczos(lambda v: A @ v, v0, 25)
    assert len(calls) == 1  # removed


def test_switch_turns_the_graph_loop_off():
    previous = lanczos_graphs.set_cuda_graphs(False)
    try:
        assert not lanczos_graphs._on_cuda(torch.zeros(3))
    finally:
        lanczos_graphs.set_cuda_graphs(previous)


@needs_cuda
def test_cuda_graph_replay_matches_the_generic_loop_without_a_sync(problem):
    A, ev, v0 = problem["A"].cuda(), problem["ev"], problem["v0"].cuda()
    first = lanczos(lambda v: A @ v, v0, 80)  # captures the buckets' graphs
    state = next(iter(lanczos_graphs._cache.values()))
    assert state.capture and not state.failed and None not in state.replays
    assert len({replay.__self__ for replay in state.replays}) == 10  # one CUDAGraph per block of 8 rows
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device->host sync in the replayed run raises
    try:
        alpha, beta, V = graph_lanczos(lambda v: A @ v, v0, 80, keep_basis=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    a_ref, b_ref, _ = _reference(lambda v: A @ v, v0, 80)
    np.testing.assert_allclose(alpha.cpu().numpy(), a_ref.cpu().numpy(), atol=1e-12)
    np.testing.assert_allclose(beta.cpu().numpy(), b_ref.cpu().numpy(), atol=1e-12)
    np.testing.assert_allclose(alpha.cpu().numpy(), first.alpha, atol=1e-12)  # replayed = first (eager+capture)
    assert _orth_error(V) < 1e-10
    theta, _ = tridiagonal_eigh(alpha.cpu().numpy(), beta.cpu().numpy())
    np.testing.assert_allclose(theta[::-1][:5], ev[::-1][:5], rtol=1e-8)


@needs_cuda
def test_cuda_graph_breakdown_path():
    d = torch.from_numpy(np.repeat(np.arange(7.0), 30)).cuda()
    graph_lanczos(lambda v: d * v, torch.ones_like(d), 20)  # capture
    alpha, beta, V = graph_lanczos(lambda v: d * v, torch.ones_like(d), 20, keep_basis=True)
    assert float(beta[6]) == 0.0 and _orth_error(V) < 1e-10
