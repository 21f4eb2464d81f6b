"""Lanczos with full reorthogonalization for a symmetric linear operator given only as ``matvec``.

This is the inner loop of the stochastic Lanczos quadrature (paper section 2.2, Algorithm 2, eq. 6)
and of the eigenvector directions of section 4. The operator is a callable ``matvec(v) -> A v`` (in
gradvis a Hessian-vector product via the R-operator); vectors are numpy arrays or a backend's own
tensors (torch, possibly on a GPU). All vector arithmetic is written once against the array API
(``array_api_compat.array_namespace``), so this module never imports torch.

Device discipline: the Krylov basis is preallocated as an ``(m, n)`` array on the operator's device;
the tridiagonal coefficients stay 0-d device arrays inside the loop (no ``float()``/``.item()``, no
host conversion), and are stacked and moved to the host once at the end. A breakdown (invariant
subspace, ``beta_j ~ 0``) is handled with ``where`` instead of a host-side branch: the next basis
vector is replaced by a pseudo-random vector (generated on the device from an integer hash, shifted
cyclically per step) orthogonalized against the basis, and ``beta_j = 0`` is recorded. ``T`` then becomes block
diagonal; its eigenvalues are still eigenvalues of ``A`` and the later blocks get quadrature weight 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace, to_device
from array_api_compat import device as array_device
from scipy.linalg import eigh_tridiagonal

__all__ = [
    "LanczosResult",
    "RitzResult",
    "lanczos",
    "ritz_pairs",
    "tridiagonal_eigh",
    "to_numpy",
    "from_numpy",
]

Array = Any  # a numpy array or a backend tensor (array-API compatible)
MatVec = Callable[[Array], Array]

_MASK32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# tiny backend-neutral helpers
# --------------------------------------------------------------------------------------------------


def to_numpy(x: Array) -> np.ndarray:
    """Copy a backend array to a host numpy array (the one place a device sync happens)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    detach = getattr(x, "detach", None)  # torch tensors that still carry autograd history
    if callable(detach):
        x = detach()
    try:
        x = to_device(x, "cpu")
    except Exception:  # namespaces without a "cpu" device string (numpy-likes): np.asarray copes
        pass
    return np.asarray(x)


def from_numpy(a: np.ndarray, like: Array | None) -> Array:
    """Convert a host array once to the array type, dtype and device of ``like`` (numpy if None)."""
    if like is None:
        return np.asarray(a)
    xp = array_namespace(like)
    return xp.asarray(a, dtype=like.dtype, device=array_device(like))


def _plain(x: Array) -> Array:
    """Drop autograd history if the backend has any, so the basis never records a graph."""
    if not getattr(x, "requires_grad", False) and getattr(x, "grad_fn", None) is None:
        return x  # nothing to drop (numpy arrays, plain tensors): no detach() call per step
    return x.detach()


def _mix32(x: int) -> int:
    """32-bit integer hash (lowbias32), on the host, for salts."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def _hash_vector(xp: Any, n: int, salt: int, dtype: Any, dev: Any) -> Array:
    """Pseudo-random vector in [-0.5, 0.5)^n made ON the device (integer hash of the index).

    Used as the restart direction after a breakdown; building it on the device avoids a host-to-device
    copy (and thus a sync) inside the Lanczos loop. Products may wrap in int64; only the low 32 bits,
    which wrapping preserves, are kept.
    """
    x = xp.arange(n, dtype=xp.int64, device=dev)
    x = (x ^ _mix32(salt)) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return xp.astype(x & 0xFFFFFF, dtype) * (1.0 / 2**24) - 0.5


def _eps(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).eps)


# --------------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Tridiagonal ``T`` (eq. 6) from m Lanczos steps: diagonal ``alpha``, off-diagonal ``beta``."""

    alpha: np.ndarray  # (m,) float64, alpha_j = q_j^T A q_j
    beta: np.ndarray  # (m-1,) float64, beta_j >= 0; exactly 0 where an invariant subspace was hit
    basis: Array | None = None  # (m, n) orthonormal Krylov basis (rows), on the operator's device

    @property
    def m(self) -> int:
        """Number of Lanczos steps actually taken (after clamping to the dimension)."""
        return int(self.alpha.shape[0])

    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigen-decomposition ``T = U L U^T`` (eq. 6): ascending eigenvalues and U (columns)."""
        return tridiagonal_eigh(self.alpha, self.beta)


def _setup(v0: Array, m: int, breakdown_tol: float | None) -> tuple[Any, int, int, Any, Any, float]:
    """Checked arguments of a Lanczos run: namespace, dimension, steps (clamped), dtype, device, breakdown tol."""
    xp = array_namespace(v0)
    if v0.ndim != 1:
        raise ValueError(f"v0 must be a 1-D vector, got shape {tuple(v0.shape)}")
    n = int(v0.shape[0])
    m = min(int(m), n)
    if m < 1:
        raise ValueError("need m >= 1 and a non-empty vector")
    tol = _eps(xp, v0.dtype) ** 0.75 if breakdown_tol is None else float(breakdown_tol)
    return xp, n, m, v0.dtype, array_device(v0), tol


def _lanczos_device(
    matvec: MatVec, v0: Array, m: int, breakdown_tol: float | None = None
) -> tuple[Array, Array, Array]:
    """Core loop; returns (alpha (m,), beta (m-1,), basis (m, n)) as device arrays, without host sync.

    Full reorthogonalization is classical Gram-Schmidt against the whole basis done twice ("twice is
    enough"), as two matrix products with the stacked basis per pass. The Gram-Schmidt coefficient of
    ``q_j`` is ``alpha_j``; the orthogonalized remainder's norm is ``beta_j`` (symmetric ``T``).
    """
    xp, n, m, dtype, dev, tol = _setup(v0, m, breakdown_tol)
    V = xp.zeros((m, n), dtype=dtype, device=dev)

    # q_0 = v0 / ||v0||; a zero v0 is replaced by a pseudo-random vector (no host-side check).
    v0 = _plain(v0)
    nrm0 = xp.linalg.vector_norm(v0)
    ok0 = nrm0 > 0
    r0 = _hash_vector(xp, n, 0x5EED, dtype, dev)
    q = xp.where(ok0, v0 / xp.where(ok0, nrm0, 1.0), r0 / xp.linalg.vector_norm(r0))
    V[0, ...] = q

    alphas: list[Array] = []
    betas: list[Array] = []
    # Restart directions: cyclic shifts of one on-device pseudo-random vector (roll(r, j + 1) for
    # step j; the shifts of a generic vector are linearly independent), cheaper than a hash per step.
    r_base = _hash_vector(xp, n, 0xB10C, dtype, dev)
    scale = xp.zeros((), dtype=dtype, device=dev)  # running max of ||A q_j||, a lower bound of ||A||
    for j in range(m):
        w = _plain(matvec(V[j, ...]))
        if j == m - 1:  # last step: only the diagonal entry is needed
            alphas.append(xp.sum(V[j, ...] * w))
            break
        scale = xp.maximum(scale, xp.linalg.vector_norm(w))
        # Block [w; r]: r is the restart direction, used only if w turns out to lie in span(V).
        W = xp.stack([w, xp.roll(r_base, shift=j + 1)])
        Vj = V[: j + 1, ...]
        c1 = W @ Vj.T  # (2, j+1) pass 1 (this orientation is the faster GEMM on GPUs)
        W = W - c1 @ Vj
        c2 = W @ Vj.T  # pass 2: twice is enough
        W = W - c2 @ Vj
        alphas.append(c1[0, j] + c2[0, j])
        beta = xp.linalg.vector_norm(W[0, ...])
        broke = beta <= tol * scale  # invariant subspace: T splits into blocks here
        q_new = xp.where(
            broke,
            W[1, ...] / xp.linalg.vector_norm(W[1, ...]),
            W[0, ...] / xp.where(broke, 1.0, beta),
        )
        betas.append(xp.where(broke, 0.0, beta))
        V[j + 1, ...] = q_new
    alpha = xp.stack(alphas)
    beta = xp.stack(betas) if betas else xp.zeros((0,), dtype=dtype, device=dev)
    return alpha, beta, V


def _is_torch(x: Array) -> bool:
    return hasattr(x, "addmv_")


def _dot(x: Array, y: Array) -> float:
    """``x . y`` as a Python float (host arrays only)."""
    if _is_torch(x):
        import torch  # only reached with torch tensors, so torch is installed

        return float(torch.dot(x, y))
    return float(x @ y)


def _norm(x: Array) -> float:
    """``||x||_2`` as a Python float (host arrays only): ``sqrt(x . x)``, one BLAS dot (several times faster than
    torch's overflow-safe norm kernel on a CPU; Lanczos vectors are unit-sized, nowhere near overflow)."""
    return _dot(x, x) ** 0.5


def _host_float64(x: Array) -> np.ndarray:
    """A short host array as numpy float64 (torch CPU tensors: through a zero-copy ``numpy()`` view)."""
    return np.asarray(x.numpy() if _is_torch(x) else x, dtype=np.float64)


def _rows_dot(M: Array, w: Array) -> Array:
    """``M @ w`` (the Gram-Schmidt coefficients; torch: ``mv`` without ``matmul``'s shape dispatch)."""
    if _is_torch(w):
        import torch

        return torch.mv(M, w)
    return M @ w


def _minus_rows(w: Array, M: Array, c: Array) -> None:
    """``w -= c @ M`` in place (``M`` rows, ``c`` coefficients; torch: ``addmv_``, no temporary of w's size)."""
    if _is_torch(w):
        w.addmv_(M.t(), c, alpha=-1)
    else:
        w -= c @ M


def _axpy(y: Array, a: float, x: Array, *, out: Array | None = None) -> Array:
    """``y + a x`` in one pass (torch: one fused kernel), written into ``out`` if given, else into ``y``."""
    if _is_torch(y):
        import torch

        return torch.add(y, x, alpha=a, out=y if out is None else out)
    if out is None:
        y += a * x
        return y
    np.multiply(x, a, out=out)
    out += y
    return out


def _scale(x: Array, a: float) -> None:
    """``x *= a`` in place."""
    if _is_torch(x):
        x.mul_(a)
    else:
        x *= a


def _scale_into(out: Array, x: Array, a: float) -> None:
    """``out[...] = a x`` (torch: one pass, written straight into ``out``)."""
    if _is_torch(x):
        import torch

        torch.mul(x, a, out=out)
    else:
        out[...] = a * x


def _on_host(v: Array) -> bool:
    """True for arrays in host memory (numpy, torch CPU tensors): reading a scalar there costs no device sync."""
    if isinstance(v, np.ndarray):
        return True
    return str(array_device(v)).split(":")[0] == "cpu"


def _lanczos_host(
    matvec: MatVec, v0: Array, m: int, breakdown_tol: float | None = None
) -> tuple[Array, Array, Array]:
    """The same Lanczos process as :func:`_lanczos_device` for arrays in host memory, where branching on a
    scalar is free. Each step applies the three-term recurrence ``w = A q_j - alpha_j q_j - beta_{j-1} q_{j-1}``
    (written straight into the next basis row) and then one classical Gram-Schmidt pass against the whole
    basis; a second pass runs only when the first removed more than ``1 - 1/sqrt(2)`` of the norm (the
    Kahan-Parlett "twice is enough" criterion), and the restart direction is made only after an actual
    breakdown. On a CPU the basis (and, once it has pushed them out of cache, every vector) is read from memory,
    so the step makes as few passes as it can: over the basis about twice per step instead of four times.
    """
    xp, n, m, dtype, dev, tol = _setup(v0, m, breakdown_tol)
    V = xp.zeros((m, n), dtype=dtype, device=dev)
    v0 = _plain(v0)
    nrm0 = float(xp.linalg.vector_norm(v0))  # overflow-safe: v0 is the caller's, of any scale
    if nrm0 > 0:
        _scale_into(V[0, ...], v0, 1.0 / nrm0)
    else:
        r0 = _hash_vector(xp, n, 0x5EED, dtype, dev)
        _scale_into(V[0, ...], r0, 1.0 / _norm(r0))

    rows = [V[i, ...] for i in range(m)]  # row views made once: each step reads four of them

    def orthogonalize(w: Array, j: int) -> tuple[Array, np.ndarray, float, float]:
        """w (owned: updated in place) minus its projection on rows 0..j of V, the coefficients (host float64),
        the norm before and after."""
        Vj = V[: j + 1, ...]
        c = _rows_dot(Vj, w)
        _minus_rows(w, Vj, c)
        after = _norm(w)
        coefficients = _host_float64(c)  # then host arithmetic on j + 1 numbers
        # ||w||^2 = ||w - V c||^2 + ||c||^2 (w - V c is orthogonal to the rows of V): the norm before the pass
        # without another pass over w.
        before = (after**2 + float(coefficients @ coefficients)) ** 0.5
        if after < before / 2**0.5:  # lost digits: a second pass restores them
            c2 = _rows_dot(Vj, w)
            _minus_rows(w, Vj, c2)
            coefficients = coefficients + _host_float64(c2)
            after = _norm(w)
        return w, coefficients, before, after

    alphas = np.zeros(m)
    betas = np.zeros(max(m - 1, 0))
    r_base = None
    scale = 0.0
    for j in range(m):
        w = _plain(matvec(rows[j]))
        a = _dot(rows[j], w)  # = q_j^T A q_j (q_j is orthogonal to q_{j-1})
        if j == m - 1:
            alphas[j] = a
            break
        # The three-term recurrence first, written straight into the next basis row (the matvec's own output is
        # never modified; the row is then normalized while still in cache); full reorthogonalization then only
        # removes rounding drift, so its first pass rarely loses enough of the norm to need a second.
        w = _axpy(w, -a, rows[j], out=rows[j + 1])
        if j > 0:
            _axpy(w, -betas[j - 1], rows[j - 1])
        w, c, local, beta = orthogonalize(w, j)
        # ||A q_j||^2 = local^2 + a^2 + beta_{j-1}^2 (Pythagoras over q_{j-1}, q_j, rest): the scale of the
        # breakdown test without another pass over A q_j.
        scale = max(scale, (local**2 + a**2 + (betas[j - 1] ** 2 if j > 0 else 0.0)) ** 0.5)
        alphas[j] = a + c[j]
        if beta <= tol * scale:  # invariant subspace: T splits here, continue from a fresh direction
            if r_base is None:
                r_base = _hash_vector(xp, n, 0xB10C, dtype, dev)
            r, _, _, r_norm = orthogonalize(xp.roll(r_base, shift=j + 1), j)
            _scale_into(rows[j + 1], r, 1.0 / r_norm)
            betas[j] = 0.0
        else:
            _scale(w, 1.0 / beta)  # w is rows[j + 1]
            betas[j] = beta
    return alphas, betas, V


def lanczos(
    matvec: MatVec,
    v0: Array,
    m: int,
    *,
    return_basis: bool = False,
    breakdown_tol: float | None = None,
) -> LanczosResult:
    """Run m Lanczos steps from ``v0`` (need not be normalized) with full reorthogonalization.

    ``m`` is clamped to the dimension. ``breakdown_tol`` is the relative size ``beta_j / max_i ||A q_i||``
    at or below which ``beta_j`` is treated as an invariant subspace (recorded as 0, the next vector
    restarted). Default ``eps ** 0.75`` of the dtype (1.8e-12 in float64, 6.6e-6 in float32): rounding
    residuals at a true breakdown reach several hundred eps, and zeroing a beta perturbs T's eigenvalues
    by at most ``beta``. Too large a value in float32 would cut genuine small bulk betas of a Hessian
    whose outliers dominate ``||A||``; ``breakdown_tol=0`` restarts only on exact zeros (a rounding-noise
    residual is then normalized like any other vector: still orthonormal, but with near-zero betas and
    zero-weight ghost Ritz values instead of a clean split). The only host sync is the final
    conversion of ``alpha``/``beta`` to numpy. Arrays in host memory (numpy, torch on the CPU), where a
    scalar read costs nothing, take :func:`_lanczos_host` instead, which branches on the host and so does
    about half the reorthogonalization work.
    """
    core = _lanczos_host if _on_host(v0) else _lanczos_device
    alpha, beta, V = core(matvec, v0, m, breakdown_tol)
    return LanczosResult(
        alpha=to_numpy(alpha).astype(np.float64),
        beta=to_numpy(beta).astype(np.float64),
        basis=V if return_basis else None,
    )


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and orthonormal eigenvectors (columns) of the symmetric tridiagonal T.

    Uses LAPACK's tridiagonal solver (``scipy.linalg.eigh_tridiagonal``), O(m^2), not a dense solver.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.shape[0] == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta)


# --------------------------------------------------------------------------------------------------
# Ritz pairs (eigenvector directions, paper section 4)
# --------------------------------------------------------------------------------------------------


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
    """Approximate k eigenpairs of A from an m-step Lanczos run (eigen-directions for the landscape plot).

    ``which``: "largest" (descending), "smallest" (most negative first, ascending) or "nearest"
    (ordered by ``|theta - target|``). Residuals are computed with k extra matvecs, so they are true
    residuals rather than the Lanczos estimate ``beta_m |u_m|``.
    """
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
    norms = [xp.linalg.vector_norm(_plain(matvec(Y[i, ...])) - th[i] * Y[i, ...]) for i in range(k)]
    residuals = to_numpy(xp.stack(norms)).astype(np.float64)
    return RitzResult(values=values, vectors=Y, residuals=residuals)
