"""The host Lanczos kernel's pass structure: two reads of the basis per step, more only where rounding demands it.

Each step makes a local pass over the two newest basis vectors (their coefficients, then the three-term recurrence
into the next row), one Gram-Schmidt pass over the basis that also gives ``||r||^2``, and one update pass; the
Kahan-Parlett "twice is enough" test is decided from Pythagoras before the update. These tests record every call
of the kernel's two vector functions (``mm``, ``addmm``) with the number of basis rows it reads, through the public
seams (the ops passed in, the kernel registration): on a symmetric operator the sequence is exactly that; an
operator which defeats one pass (non-symmetric, with a large part along a direction already in the basis) takes the
explicit-norm and second-pass path and still gets an orthonormal basis; after a breakdown the next row is the
documented restart direction, as in the reference algorithm. The last tests check that runs never share buffers.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest

from gradvis_steps.core.arrays import RESTART_SALT, hash_vector
from gradvis_steps.core.lanczos import lanczos, reference_only, register_kernel
from gradvis_steps.core.lanczos_host import NUMPY_OPS, host_lanczos

try:  # torch is an optional backend: the numpy tests run without it
    import torch

    from gradvis_steps.backends.torch.lanczos_graphs import TORCH_HOST_OPS
except ImportError:  # pragma: no cover
    torch = None

BACKENDS = ["numpy", pytest.param("torch", marks=pytest.mark.skipif(torch is None, reason="torch not installed"))]


def _orth_error(V: np.ndarray) -> float:
    return float(np.abs(V @ V.T - np.eye(V.shape[0])).max())


def _operator(backend: str, M: np.ndarray, v0: np.ndarray):
    """``(matvec, v0)`` in the backend's arrays (float64; torch CPU tensors take the host kernel too)."""
    if backend == "torch":
        Mt = torch.from_numpy(M)
        return (lambda v: Mt @ v), torch.from_numpy(v0)
    return (lambda v: M @ v), v0


@pytest.fixture()
def calls():
    """Every ``mm`` / ``addmm`` call of the host kernel, in order, as (name, rows of the basis operand): a kernel
    with recording ops, registered for every array while the test runs."""
    recorded: list[tuple[str, int]] = []

    def recording(name, fn, basis_arg):
        def recorded_fn(*args, **kwargs):
            recorded.append((name, int(args[basis_arg].shape[0])))
            return fn(*args, **kwargs)

        return recorded_fn

    def kernel(op, v0, m, tol, keep_basis):
        ops = TORCH_HOST_OPS if torch is not None and isinstance(v0, torch.Tensor) else NUMPY_OPS
        ops = dataclasses.replace(ops, mm=recording("mm", ops.mm, 0), addmm=recording("addmm", ops.addmm, 2))
        return host_lanczos(ops, op, v0, m, tol, keep_basis)

    remove = register_kernel(lambda v0: True, kernel)
    yield recorded
    remove()


def _one_pass_per_step(m: int) -> list[tuple[str, int]]:
    """The calls of an m-step run without second passes: per step j, the local pass over rows j-1..j (coefficients,
    then the recurrence), the Gram-Schmidt coefficients over rows 0..j+1 and the update over rows 0..j; the last
    step only its coefficients."""
    expected = []
    for j in range(m - 1):
        pair = min(j, 1) + 1
        expected += [("mm", pair), ("addmm", pair), ("mm", j + 2), ("addmm", j + 1)]
    return expected + [("mm", min(m - 1, 1) + 1)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_symmetric_operator_reads_the_basis_twice_per_step(backend, calls):
    rng = np.random.default_rng(11)
    n, m = 400, 60
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.concatenate([rng.uniform(-1.0, 3.0, n - 3), [40.0, 25.0, -6.0]])) @ Q.T
    A = 0.5 * (A + A.T)
    matvec, v0 = _operator(backend, A, rng.standard_normal(n))
    res = lanczos(matvec, v0, m, return_basis=True)
    assert calls == _one_pass_per_step(m)
    V = np.asarray(res.basis)
    assert _orth_error(V) < 1e-13
    # the Pythagoras norm is the true one: A q_j = beta_{j-1} q_{j-1} + alpha_j q_j + beta_j q_{j+1}
    T = np.diag(res.alpha) + np.diag(res.beta, 1) + np.diag(res.beta, -1)
    assert np.abs(V @ A @ V.T - T).max() < 1e-12
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonsymmetric_operator_takes_the_second_pass_and_stays_orthonormal(backend, calls):
    rng = np.random.default_rng(12)
    n, m = 300, 80
    # Not symmetric, and A q_j is dominated by the fixed direction u, which lies in span(V) after the first steps:
    # a Gram-Schmidt pass cancels most of A q_j there (plain noise would leave most of it, as j << n).
    M = rng.standard_normal((n, n)) / np.sqrt(n)
    u, z = (x / np.linalg.norm(x) for x in rng.standard_normal((2, n)))
    M += 50.0 * np.outer(u, z)
    matvec, v0 = _operator(backend, M, rng.standard_normal(n))
    res = lanczos(matvec, v0, m, return_basis=True)
    assert len(calls) > len(_one_pass_per_step(m))  # second passes ran
    V = np.asarray(res.basis)
    assert _orth_error(V) < 1e-13
    assert np.all(np.isfinite(res.alpha)) and np.all(res.beta > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_breakdown_restarts_from_the_rolled_pseudo_random_direction(backend):
    """A diagonal operator with 7 distinct values: the Krylov space is exhausted after 7 steps, so beta_6 = 0 and
    q_7 is ``roll(r_base, 7)`` made orthonormal to q_0..q_6 (the device loop restarts from the same direction)."""
    rng = np.random.default_rng(13)
    d = np.repeat(np.array([-2.0, -0.5, 0.0, 1.0, 2.5, 4.0, 9.0]), 30)
    n = d.size
    matvec, v0 = _operator(backend, np.diag(d), rng.standard_normal(n))
    res = lanczos(matvec, v0, 12, return_basis=True)
    V = np.asarray(res.basis)
    assert res.beta[6] == 0.0 and np.count_nonzero(res.beta == 0.0) == 1
    assert _orth_error(V) < 1e-13
    x = np.roll(hash_vector(np, n, RESTART_SALT, np.float64, "cpu"), 7)
    for _ in range(2):
        x -= V[:7].T @ (V[:7] @ x)
    np.testing.assert_allclose(V[7], x / np.linalg.norm(x), atol=1e-13)
    # the reference algorithm makes the same choice
    with reference_only():
        reference = lanczos(matvec, v0, 12, return_basis=True)
    np.testing.assert_allclose(reference.beta, res.beta, atol=1e-12)
    np.testing.assert_allclose(np.asarray(reference.basis)[7], V[7], atol=1e-12)


def _spectrum_operator(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.concatenate([rng.uniform(-1.0, 2.0, n - 2), [30.0, -5.0]])) @ Q.T
    return 0.5 * (A + A.T), rng.standard_normal(n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_handed_out_basis_is_never_overwritten(backend):
    A, v0 = _spectrum_operator(23)
    B, w0 = _spectrum_operator(24)
    first = lanczos(*_operator(backend, A, v0), 30, return_basis=True)
    V = np.asarray(first.basis).copy()
    lanczos(*_operator(backend, B, w0), 30)  # same shape
    lanczos(*_operator(backend, B, w0), 30, return_basis=True)
    np.testing.assert_array_equal(np.asarray(first.basis), V)
    assert _orth_error(V) < 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_nested_in_the_matvec_does_not_share_buffers(backend):
    A, v0 = _spectrum_operator(25)
    B, w0 = _spectrum_operator(26)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_host_kernel_is_what_a_single_host_chain_runs(backend):
    """Host arrays take the registered host kernel: its results bitwise, called directly with the capped m and the
    default tolerance; it and the reference both find A's whole spectrum in n steps."""
    A, v0 = _spectrum_operator(28)
    matvec, start = _operator(backend, A, v0)
    res = lanczos(matvec, start, 500, return_basis=True)  # m capped to n = 200
    ops = NUMPY_OPS if backend == "numpy" else TORCH_HOST_OPS
    alpha, beta, V = partial(host_lanczos, ops)(matvec, start, 200, np.finfo(np.float64).eps ** 0.75, True)
    np.testing.assert_array_equal(res.alpha, alpha)
    np.testing.assert_array_equal(res.beta, beta)
    np.testing.assert_array_equal(np.asarray(res.basis), np.asarray(V))
    with reference_only():
        reference = lanczos(matvec, start, 500)
    exact = np.linalg.eigvalsh(A)  # m = n: T's eigenvalues are A's
    np.testing.assert_allclose(reference.eigh()[0], exact, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.eigh()[0], exact, rtol=0, atol=1e-10)


def test_the_lanczos_modules_import_each_other_without_a_loop():
    """core/arrays.py <- core/lanczos_host.py <- core/lanczos.py <- core/slq.py, and no import back (at any level)."""
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "gradvis_steps" / "core"
    names = ["arrays", "lanczos_host", "lanczos", "slq"]
    imports = {}
    for name in names:
        tree = ast.parse((core / f"{name}.py").read_text())
        imports[name] = {node.module for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in names}
    assert imports == {"arrays": set(), "lanczos_host": {"arrays"}, "lanczos": {"arrays", "lanczos_host"},
                       "slq": {"arrays", "lanczos"}}
