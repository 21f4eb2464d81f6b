"""Lanczos with full reorthogonalization over a block of g starting vectors (g = 1: plain Lanczos), and Ritz pairs.

The inner loop of stochastic Lanczos quadrature (paper section 2.2, Algorithm 2, eq. 6) and of the eigenvector
directions of section 4. The operator is a callable ``op(v) -> A v`` (in gradvis a Hessian-vector product), which
may offer ``op.matmat(V)`` for the rows of a (g, n) block at once; vectors are numpy arrays or a backend's tensors.

:func:`lanczos` runs one algorithm, :func:`reference_lanczos`, written once against the array API: the g chains
advance in lockstep (one block product per step), each with its own basis, reorthogonalized by classical
Gram-Schmidt done twice ("twice is enough"); a breakdown (``beta_j <= tol * max_i ||A q_i||``, per chain) records
``beta_j = 0`` and continues from an orthogonalized pseudo-random direction chosen with ``where`` (no host branch,
so no device sync). ``T`` is then block diagonal; its eigenvalues are still eigenvalues of ``A`` and the later blocks
get quadrature weight 0. Faster inner loops for one chain plug in behind it (:func:`register_kernel`): the host
loop of :mod:`.lanczos_host` for host arrays, the torch backend's CUDA-graph loop for CUDA tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as array_device
from scipy.linalg import eigh_tridiagonal

from .arrays import RESTART_SALT, START_SALT, Array, from_numpy, hash_vector, plain, to_numpy
from .lanczos_host import NUMPY_OPS, host_lanczos

__all__ = ["Kernel", "LanczosResult", "RitzResult", "breakdown_tolerance", "lanczos", "lanczos_steps",
           "reference_lanczos", "reference_only", "register_kernel", "ritz_pairs", "tridiagonal_eigh", "to_numpy",
           "from_numpy"]

MatVec = Callable[[Array], Array]
#: A kernel for one chain: (op, v0 (n,), m, tol, keep_basis) -> (alpha (m,), beta (m-1,), basis (m, n) or None),
#: the reference's process and results up to rounding; m is already capped, tol absolute.
Kernel = Callable[[MatVec, Array, int, float, bool], "tuple[Array, Array, Array | None]"]


def lanczos_steps(m: int, n: int) -> int:
    """The steps an m-step run on n-vectors takes: m capped to n (a Krylov space has at most n dimensions)."""
    if int(m) < 1 or int(n) < 1:
        raise ValueError(f"need m >= 1 and a non-empty vector, got m={m} for vectors of {n} entries")
    return min(int(m), int(n))


def breakdown_tolerance(xp: Any, dtype: Any, breakdown_tol: float | None) -> float:
    """``breakdown_tol``, or by default ``eps ** 0.75`` of the dtype (see :func:`lanczos`)."""
    return float(xp.finfo(dtype).eps) ** 0.75 if breakdown_tol is None else float(breakdown_tol)


def reference_lanczos(matmat: MatVec, V0: Array, m: int, tol: float, keep_basis: bool = True) -> tuple[Array, ...]:
    """m steps for each row of ``V0`` (g, n) in lockstep: ``alpha`` (g, m), ``beta`` (g, m-1) and the bases
    (g, m, n), arrays of V0's kind on its device, without a host sync. ``matmat`` multiplies a (g, n) block's rows."""
    xp = array_namespace(V0)
    g, n = (int(s) for s in V0.shape)
    dtype, dev = V0.dtype, array_device(V0)
    basis = xp.zeros((g, m, n), dtype=dtype, device=dev)
    V0 = plain(V0)
    norms = xp.linalg.vector_norm(V0, axis=1)
    ok = norms > 0  # a zero row starts from a pseudo-random vector
    r0 = hash_vector(xp, n, START_SALT, dtype, dev)
    basis[:, 0, :] = xp.where(ok[:, None], V0 / xp.where(ok, norms, 1.0)[:, None], (r0 / xp.linalg.vector_norm(r0)))
    # Restart directions: cyclic shifts of one on-device pseudo-random vector (roll(r, j + 1) at step j), shared by
    # the chains: each orthogonalizes it against its own basis.
    r_base = hash_vector(xp, n, RESTART_SALT, dtype, dev)
    scale = xp.zeros((g,), dtype=dtype, device=dev)  # per chain: running max of ||A q_j||, a lower bound of ||A||
    alphas: list[Array] = []
    betas: list[Array] = []
    for j in range(m):
        W = plain(matmat(basis[:, j, :]))
        if j == m - 1:  # last step: only the diagonal entries are needed
            alphas.append(xp.sum(basis[:, j, :] * W, axis=1))
            break
        scale = xp.maximum(scale, xp.linalg.vector_norm(W, axis=1))
        # per chain the block [A q_j; r]: r is the restart direction, used only where A q_j lies in the chain's span
        X = xp.stack([W, xp.broadcast_to(xp.roll(r_base, shift=j + 1), (g, n))], axis=1)  # (g, 2, n)
        head = basis[:, : j + 1, :]  # (g, j+1, n)
        head_t = xp.permute_dims(head, (0, 2, 1))
        c1 = X @ head_t  # (g, 2, j+1): pass 1 ...
        X = X - c1 @ head
        c2 = X @ head_t  # ... and pass 2
        X = X - c2 @ head
        alphas.append(c1[:, 0, j] + c2[:, 0, j])
        beta = xp.linalg.vector_norm(X[:, 0, :], axis=1)
        broke = beta <= tol * scale  # invariant subspace: this chain's T splits here
        restart = X[:, 1, :] / xp.linalg.vector_norm(X[:, 1, :], axis=1)[:, None]
        basis[:, j + 1, :] = xp.where(broke[:, None], restart, X[:, 0, :] / xp.where(broke, 1.0, beta)[:, None])
        betas.append(xp.where(broke, 0.0, beta))
    alpha = xp.stack(alphas, axis=1)
    beta = xp.stack(betas, axis=1) if betas else xp.zeros((g, 0), dtype=dtype, device=dev)
    return alpha, beta, basis if keep_basis else None


def _rows(op: MatVec) -> MatVec:
    """A block product from a one-vector product, row by row."""
    return lambda V: array_namespace(V).stack([plain(op(V[i, ...])) for i in range(V.shape[0])])


_kernels: list[tuple[Callable[[Array], bool], Kernel]] = []
_use_kernels = [True]


def register_kernel(accepts: Callable[[Array], bool], kernel: Kernel) -> Callable[[], None]:
    """Run the single chains whose start ``accepts(v0)`` picks with ``kernel`` instead of the reference (later
    registrations first). Returns a function that removes the registration."""
    entry = (accepts, kernel)
    _kernels.insert(0, entry)
    return lambda: _kernels.remove(entry)


@contextmanager
def reference_only() -> Iterator[None]:
    """Within the block every run, in every thread, takes :func:`reference_lanczos` (to check or time a kernel)."""
    _use_kernels[0], previous = False, _use_kernels[0]
    try:
        yield
    finally:
        _use_kernels[0] = previous


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Tridiagonal ``T`` (eq. 6) of each chain: diagonal ``alpha``, off-diagonal ``beta`` (a leading g axis for a
    block), and the orthonormal Krylov basis (rows) on the operator's device if asked for."""

    alpha: np.ndarray  # (m,) or (g, m) float64, alpha_j = q_j^T A q_j
    beta: np.ndarray  # (m-1,) or (g, m-1) float64, beta_j >= 0; exactly 0 where an invariant subspace was hit
    basis: Array | None = None  # (m, n) or (g, m, n)

    @property
    def m(self) -> int:
        """Number of Lanczos steps actually taken (after capping to the dimension)."""
        return int(self.alpha.shape[-1])

    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigen-decomposition ``T = U L U^T`` (eq. 6) of a single chain: ascending eigenvalues and U (columns)."""
        if self.alpha.ndim != 1:
            raise ValueError(f"eigh() needs a single chain, this result holds {self.alpha.shape[0]}")
        return tridiagonal_eigh(self.alpha, self.beta)


def lanczos(
    op: MatVec, V0: Array, m: int, *, return_basis: bool = False, breakdown_tol: float | None = None
) -> LanczosResult:
    """m Lanczos steps with full reorthogonalization from ``V0``: one vector (n,), a plain chain, or a block (g, n)
    of chains in lockstep (products by ``op.matmat`` where the operator has one, else row by row). Rows need not
    be normalized; a zero row starts from a pseudo-random vector.

    ``m`` is capped to the dimension. ``breakdown_tol`` is the relative size ``beta_j / max_i ||A q_i||`` at or
    below which ``beta_j`` is an invariant subspace (recorded as 0, the next vector restarted); default ``eps **
    0.75`` of the dtype (1.8e-12 in float64, 6.6e-6 in float32): rounding residuals at a true breakdown reach
    several hundred eps, and zeroing a beta perturbs T's eigenvalues by at most ``beta``. Too large a value in
    float32 would cut genuine small bulk betas of a Hessian whose outliers dominate ``||A||``; ``breakdown_tol=0``
    restarts only on exact zeros. A single chain takes the first registered kernel that accepts its vector.
    """
    if V0.ndim not in (1, 2) or V0.shape[0] < 1:
        raise ValueError(f"V0 must be a vector (n,) or a block of g >= 1 vectors (g, n), got shape {tuple(V0.shape)}")
    xp = array_namespace(V0)
    m = lanczos_steps(m, V0.shape[-1])
    tol = breakdown_tolerance(xp, V0.dtype, breakdown_tol)
    if V0.ndim == 2:
        matmat = getattr(op, "matmat", None) or _rows(op)
        alpha, beta, basis = reference_lanczos(matmat, V0, m, tol, return_basis)
    else:
        kernel = next((k for accepts, k in _kernels if accepts(V0)), None) if _use_kernels[0] else None
        if kernel is not None:
            alpha, beta, basis = kernel(op, V0, m, tol, return_basis)
        else:
            alpha, beta, basis = reference_lanczos(_rows(op), xp.stack([V0]), m, tol, return_basis)
            alpha, beta, basis = alpha[0, ...], beta[0, ...], None if basis is None else basis[0, ...]
    return LanczosResult(alpha=to_numpy(alpha).astype(np.float64), beta=to_numpy(beta).astype(np.float64),
                         basis=basis if return_basis else None)


register_kernel(lambda v0: isinstance(v0, np.ndarray), partial(host_lanczos, NUMPY_OPS))


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and orthonormal eigenvectors (columns) of the symmetric tridiagonal T, by LAPACK's
    tridiagonal solver (``scipy.linalg.eigh_tridiagonal``), O(m^2)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if not (np.isfinite(alpha).all() and np.isfinite(beta).all()):
        raise ValueError("the Lanczos coefficients are not finite: the operator's products overflow (at a point where "
                         "training diverged?)")
    if alpha.shape[0] == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta)


@dataclass(frozen=True, eq=False)
class RitzResult:
    """k Ritz pairs of A: values, unit vectors (rows, backend array) and true residual norms."""

    values: np.ndarray  # (k,)
    vectors: Array  # (k, n), same array type / device / dtype as v0
    residuals: np.ndarray  # (k,) ||A y - theta y||_2, from k extra matvecs


def ritz_pairs(
    matvec: MatVec,
    v0: Array,
    m: int,
    k: int,
    which: Literal["largest", "smallest", "nearest"] = "largest",
    target: float = 0.0,
    *,
    breakdown_tol: float | None = None,
) -> RitzResult:
    """Approximate k eigenpairs of A from an m-step Lanczos run from the vector ``v0`` (paper section 4).

    ``which``: "largest" (descending), "smallest" (most negative first, ascending) or "nearest" (ordered by
    ``|theta - target|``). Residuals are computed with k extra matvecs (one block product where ``matvec`` has a
    ``matmat``), so they are true residuals rather than the Lanczos estimate ``beta_m |u_m|``.
    """
    if v0.ndim != 1:
        raise ValueError(f"v0 must be a 1-D vector, got shape {tuple(v0.shape)}")
    res = lanczos(matvec, v0, m, return_basis=True, breakdown_tol=breakdown_tol)
    theta, U = res.eigh()
    if not 1 <= k <= theta.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of Lanczos steps {theta.shape[0]}")
    if which == "largest":
        sel = np.argsort(-theta, kind="stable")[:k]
    elif which == "smallest":
        sel = np.argsort(theta, kind="stable")[:k]
    elif which == "nearest":
        sel = np.argsort(np.abs(theta - target), kind="stable")[:k]
    else:
        raise ValueError(f"which must be 'largest', 'smallest' or 'nearest', got {which!r}")
    V = res.basis
    xp = array_namespace(V)
    Y = from_numpy(np.ascontiguousarray(U[:, sel].T), like=V) @ V  # (k, n) Ritz vectors y = V^T u
    values = theta[sel]
    th = from_numpy(values, like=V)
    matmat = getattr(matvec, "matmat", None)  # the k products as one block where the operator can
    products = plain(matmat(Y)) if matmat is not None else xp.stack([plain(matvec(Y[i, ...])) for i in range(k)])
    residuals = to_numpy(xp.linalg.vector_norm(products - th[:, None] * Y, axis=1)).astype(np.float64)
    return RitzResult(values=values, vectors=Y, residuals=residuals)
