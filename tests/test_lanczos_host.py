"""The host Lanczos loop's pass structure: two reads of the basis per step, more only where rounding demands it.

Each step also makes a local pass over the two newest basis vectors (their coefficients, then the three-term
recurrence); those are counted apart and read at most two rows. The loop decides the Kahan-Parlett "twice is
enough" test from Pythagoras before its update pass; these tests count the passes over the basis on a symmetric
operator (no second pass may run) and check that an operator which defeats one pass (non-symmetric, with a large
part along a direction already in the basis) still gets an orthonormal basis, through the explicit-norm and
second-pass path. The last tests cover the workspace (basis and views) the loop keeps between runs of one shape:
nothing a previous run left is read, a handed-out basis is never reused, a run nested in a matvec gets its own.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradvis_steps.core.lanczos as lanczos_module
from gradvis_steps.core.lanczos import lanczos

try:  # torch is an optional backend: the numpy tests run without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

BACKENDS = ["numpy", pytest.param("torch", marks=pytest.mark.skipif(torch is None, reason="torch not installed"))]


def _orth_error(V: np.ndarray) -> float:
    return float(np.abs(V @ V.T - np.eye(V.shape[0])).max())


def _operator(backend: str, M: np.ndarray, v0: np.ndarray):
    """``(matvec, v0)`` in the backend's arrays (float64; torch CPU tensors take the host loop too)."""
    if backend == "torch":
        Mt = torch.from_numpy(M)
        return (lambda v: Mt @ v), torch.from_numpy(v0)
    return (lambda v: M @ v), v0


@pytest.fixture()
def passes(monkeypatch):
    """Counts the coefficient passes (``V_j x``) and update passes (``x -= V_j^T c``) over the basis, and the local
    passes over the pair (q_{j-1}, q_j) apart, checking that those read at most two rows."""
    counts = {"coefficients": 0, "updates": 0, "pair": 0}
    host_ops = lanczos_module._host_ops

    def counting(name, fn, rows_of=None):
        def counted(*args, **kwargs):
            if rows_of is not None:  # a pair pass: the basis operand has at most two rows
                assert rows_of(args) <= 2
            counts[name] += 1
            return fn(*args, **kwargs)

        return counted

    def counting_host_ops(x):
        ops = host_ops(x)
        ops.mm = counting("coefficients", ops.mm)
        ops.addmm = counting("updates", ops.addmm)
        ops.pair_mm = counting("pair", ops.pair_mm, lambda args: args[0].shape[0])
        ops.pair_addmm = counting("pair", ops.pair_addmm, lambda args: args[2].shape[0])
        return ops

    monkeypatch.setattr(lanczos_module, "_host_ops", counting_host_ops)
    return counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_symmetric_operator_one_coefficient_and_one_update_pass_per_step(backend, passes):
    rng = np.random.default_rng(11)
    n, m = 400, 60
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.concatenate([rng.uniform(-1.0, 3.0, n - 3), [40.0, 25.0, -6.0]])) @ Q.T
    A = 0.5 * (A + A.T)
    matvec, v0 = _operator(backend, A, rng.standard_normal(n))
    res = lanczos(matvec, v0, m, return_basis=True)
    assert passes == {"coefficients": m - 1, "updates": m - 1, "pair": 2 * m - 1}
    V = np.asarray(res.basis)
    assert _orth_error(V) < 1e-13
    # the Pythagoras norm is the true one: A q_j = beta_{j-1} q_{j-1} + alpha_j q_j + beta_j q_{j+1}
    T = np.diag(res.alpha) + np.diag(res.beta, 1) + np.diag(res.beta, -1)
    assert np.abs(V @ A @ V.T - T).max() < 1e-12
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonsymmetric_operator_takes_the_second_pass_and_stays_orthonormal(backend, passes):
    rng = np.random.default_rng(12)
    n, m = 300, 80
    # Not symmetric, and A q_j is dominated by the fixed direction u, which lies in span(V) after the first steps:
    # a Gram-Schmidt pass cancels most of A q_j there (plain noise would leave most of it, as j << n).
    M = rng.standard_normal((n, n)) / np.sqrt(n)
    u, z = (x / np.linalg.norm(x) for x in rng.standard_normal((2, n)))
    M += 50.0 * np.outer(u, z)
    matvec, v0 = _operator(backend, M, rng.standard_normal(n))
    res = lanczos(matvec, v0, m, return_basis=True)
    assert passes["coefficients"] > m - 1 and passes["updates"] > m - 1  # second passes ran
    V = np.asarray(res.basis)
    assert _orth_error(V) < 1e-13
    assert np.all(np.isfinite(res.alpha)) and np.all(res.beta > 0)


def _spectrum_operator(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.concatenate([rng.uniform(-1.0, 2.0, n - 2), [30.0, -5.0]])) @ Q.T
    return 0.5 * (A + A.T), rng.standard_normal(n)


def _poison_kept_workspace() -> None:
    """Fill the kept basis and coefficient buffers with NaN: a run that read anything a previous run left would
    return NaN."""
    ws = lanczos_module._kept_workspace.ws
    for buffer in (ws.V, ws.product_columns[-1], ws.local_columns[-1]):
        if isinstance(buffer, np.ndarray):
            buffer[...] = np.nan
        else:
            buffer.fill_(float("nan"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kept_workspace_gives_the_fresh_runs_results_bitwise(backend):
    lanczos_module.clear_lanczos_workspace()
    A, v0 = _spectrum_operator(21)
    B, w0 = _spectrum_operator(22)
    fresh = []
    for M, start in ((A, v0), (B, w0)):
        lanczos_module.clear_lanczos_workspace()
        fresh.append(lanczos(*_operator(backend, M, start), 40))
    # now back to back, the second reusing (and first poisoned) the workspace the first run kept
    lanczos(*_operator(backend, A, v0), 40)
    kept = lanczos_module._kept_workspace.ws
    assert kept is not None
    _poison_kept_workspace()
    again = lanczos(*_operator(backend, B, w0), 40)
    assert lanczos_module._kept_workspace.ws is kept  # reused, not rebuilt
    np.testing.assert_array_equal(again.alpha, fresh[1].alpha)
    np.testing.assert_array_equal(again.beta, fresh[1].beta)
    lanczos_module.clear_lanczos_workspace()
    assert lanczos_module._kept_workspace.ws is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_handed_out_basis_is_never_overwritten(backend):
    A, v0 = _spectrum_operator(23)
    B, w0 = _spectrum_operator(24)
    first = lanczos(*_operator(backend, A, v0), 30, return_basis=True)
    V = np.asarray(first.basis).copy()
    lanczos(*_operator(backend, B, w0), 30)  # same shape, basis kept by the loop
    lanczos(*_operator(backend, B, w0), 30, return_basis=True)
    np.testing.assert_array_equal(np.asarray(first.basis), V)
    assert _orth_error(V) < 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_nested_in_the_matvec_does_not_share_the_workspace(backend):
    A, v0 = _spectrum_operator(25)
    B, w0 = _spectrum_operator(26)
    lanczos_module.clear_lanczos_workspace()
    plain = lanczos(*_operator(backend, A, v0), 30)
    inner_matvec, inner_v0 = _operator(backend, B, w0)
    outer_matvec, outer_v0 = _operator(backend, A, v0)
    inner_alphas = []

    def nesting(v):  # e.g. a preconditioner estimated by its own Lanczos run, at the same shape
        inner_alphas.append(lanczos(inner_matvec, inner_v0, 30).alpha)
        return outer_matvec(v)

    nested = lanczos(nesting, outer_v0, 30)
    np.testing.assert_array_equal(nested.alpha, plain.alpha)
    np.testing.assert_array_equal(nested.beta, plain.beta)
    for alpha in inner_alphas[1:]:
        np.testing.assert_array_equal(alpha, inner_alphas[0])


def test_large_bases_are_not_kept(monkeypatch):
    lanczos_module.clear_lanczos_workspace()
    A, v0 = _spectrum_operator(27)
    monkeypatch.setattr(lanczos_module, "_WORKSPACE_KEEP_BYTES", 30 * 200 * 8 - 1)
    lanczos(lambda v: A @ v, v0, 30)
    assert lanczos_module._kept_workspace.ws is None
    monkeypatch.setattr(lanczos_module, "_WORKSPACE_KEEP_BYTES", 30 * 200 * 8)
    lanczos(lambda v: A @ v, v0, 30)
    assert lanczos_module._kept_workspace.ws.V.shape == (30, 200)
    lanczos(lambda v: A @ v, v0, 20)  # another shape replaces it
    assert lanczos_module._kept_workspace.ws.V.shape == (20, 200)
    lanczos_module.clear_lanczos_workspace()
