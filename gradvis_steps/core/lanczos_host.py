"""The host kernel of :func:`.lanczos.lanczos`: one chain on arrays in host memory, where reading a scalar is free.

The process is the reference algorithm's (Lanczos with full reorthogonalization, relative breakdown, restart from
the rolled pseudo-random direction); branching on the host lets a step do only the reorthogonalization work rounding
calls for (one Gram-Schmidt pass where the Kahan-Parlett test allows, two where not), about half the reference's.
The vector work goes through four functions with torch's signatures (:class:`HostOps`), passed in by the caller:
numpy's here (:data:`NUMPY_OPS`), torch's from its backend. Figures in bench/README.md ("Why the host loop looks
like this").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as array_device

from .arrays import RESTART_SALT, START_SALT, Array, hash_vector, plain

__all__ = ["NUMPY_OPS", "HostOps", "host_lanczos"]


@dataclass(frozen=True)
class HostOps:
    """The host kernel's vector functions, torch's signatures: ``dot(x, y)``, ``mul(x, a, out=)``, ``mm(A, B,
    out=)`` and ``addmm(x, c, M, beta=, alpha=, out=)`` (``out = beta x + alpha c @ M``, in one GEMM for torch)."""

    dot: Callable[..., Any]
    mul: Callable[..., Any]
    mm: Callable[..., Any]
    addmm: Callable[..., Any]


def _np_mul(x: np.ndarray, a: float, *, out: np.ndarray) -> np.ndarray:
    return np.multiply(x, a, out=out)


def _np_mm(A: np.ndarray, B: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    return np.matmul(A, B, out=out)


def _np_addmm(x: np.ndarray, c: np.ndarray, M: np.ndarray, *, beta: float, alpha: float, out: np.ndarray) -> np.ndarray:
    """``out = beta x + alpha c @ M`` (``out`` may be ``x``, not ``M``)."""
    product = c @ M
    np.multiply(x, beta, out=out)
    out += alpha * product
    return out


NUMPY_OPS = HostOps(dot=np.dot, mul=_np_mul, mm=_np_mm, addmm=_np_addmm)


def host_lanczos(
    ops: HostOps, matvec: Callable[[Array], Array], v0: Array, m: int, tol: float, keep_basis: bool = True
) -> tuple[np.ndarray, np.ndarray, Array | None]:
    """m steps (already capped to the dimension) from ``v0`` (n,): ``(alpha (m,), beta (m-1,), basis (m, n))``.

    Step j, with ``w = A q_j``:

    1. Local pass: ``b = q_{j-1}.w`` (beta_{j-1} in exact arithmetic) and ``a = q_j.w`` from one product with rows
       j-1 and j, then the three-term recurrence ``r = w - a q_j - b q_{j-1}`` written into row j+1.
    2. Global pass, classical Gram-Schmidt against rows 0..j (it removes rounding drift): one product of rows
       0..j+1 with r gives ``c_i = q_i.r`` and, from row j+1 (which is r), ``||r||^2``.
    3. ``beta_j^2 = ||r||^2 - ||c||^2`` by Pythagoras. If that kept at least half of ``||r||^2`` (the Kahan-Parlett
       "twice is enough" test, decided before the update), one update ``q_{j+1} = (r - V_j^T c) / beta_j`` ends the
       step; otherwise the norm is taken after the update, and a second pass runs if the test still fails. A
       breakdown (``beta_j <= tol * max_i ||A q_i||``) records ``beta_j = 0`` and continues from the restart
       direction orthogonalized against the basis.
    """
    xp = array_namespace(v0)
    n, dtype, dev = int(v0.shape[0]), v0.dtype, array_device(v0)
    V = xp.empty((m, n), dtype=dtype, device=dev)  # every row is written before it is read
    pair_coef = xp.empty((2,), dtype=dtype, device=dev)  # (q_{j-1}.w, q_j.w) of the local pass
    coef = xp.empty((m + 1,), dtype=dtype, device=dev)  # (q_0.x, ..., q_j.x) of a Gram-Schmidt pass, then r.r

    def norm(x: Array) -> float:
        # sqrt(x . x): one BLAS dot, cheaper on a CPU than the overflow-safe norm kernel (unit-sized vectors here)
        return float(ops.dot(x, x)) ** 0.5

    def reorthogonalize(j: int, x: Array, before: float) -> tuple[float, float]:
        """``x -= V_j^T c`` in place (c, x's coefficients over rows 0..j, already in ``coef``), then a second pass
        if that lost more than half of ``before**2``. Returns the second pass's coefficient of q_j (0 without one)
        and ``||x||`` after."""
        head, line, column = V[: j + 1], coef[: j + 1].reshape(1, j + 1), coef[: j + 1].reshape(j + 1, 1)
        x_line = x.reshape(1, n)
        ops.addmm(x_line, line, head, beta=1.0, alpha=-1.0, out=x_line)
        after = norm(x)
        if after >= before / 2**0.5:
            return 0.0, after
        ops.mm(head, x.reshape(n, 1), out=column)
        extra = float(coef[j])
        ops.addmm(x_line, line, head, beta=1.0, alpha=-1.0, out=x_line)
        return extra, norm(x)

    v0 = plain(v0)
    nrm0 = float(xp.linalg.vector_norm(v0))  # overflow-safe: v0 is the caller's, of any scale
    if nrm0 > 0:
        ops.mul(v0, 1.0 / nrm0, out=V[0])
    else:
        r0 = hash_vector(xp, n, START_SALT, dtype, dev)
        ops.mul(r0, 1.0 / norm(r0), out=V[0])

    alphas: list[float] = []
    betas: list[float] = []
    r_base = None  # restart directions, made at the first breakdown
    scale = 0.0  # running max of ||A q_j||, a lower bound of ||A||
    for j in range(m):
        k = min(j, 1) + 1  # rows in the local pass: q_j, and q_{j-1} after the first step
        pair = V[j + 1 - k : j + 1]
        w = plain(matvec(V[j]))
        # 1. local pass over q_{j-1} and q_j (q_0 alone at j = 0)
        ops.mm(pair, w.reshape(n, 1), out=pair_coef[:k].reshape(k, 1))
        a = float(pair_coef[k - 1])
        if j == m - 1:  # last step: only the diagonal entry is needed
            alphas.append(a)
            break
        b = float(pair_coef[0]) if j else 0.0
        r = V[j + 1]
        r_line = r.reshape(1, n)
        ops.addmm(w.reshape(1, n), pair_coef[:k].reshape(1, k), pair, beta=1.0, alpha=-1.0, out=r_line)
        # 2. global pass: c_i = q_i.r for i <= j, and r.r from row j + 1
        ops.mm(V[: j + 2], r.reshape(n, 1), out=coef[: j + 2].reshape(j + 2, 1))
        *c, rr = coef[: j + 2].tolist()
        cc = 0.0
        for value in c:  # ||c||^2 in double precision
            cc += value * value
        # ||A q_j||^2 = ||r||^2 + a^2 + b^2 (Pythagoras over q_{j-1}, q_j and the rest): the breakdown test's
        # scale without another pass over A q_j
        scale = max(scale, (rr + a * a + b * b) ** 0.5)
        alpha = a + c[j]
        # 3. beta_j, the update pass, and a second pass or a restart only where needed
        beta_sq = rr - cc
        if 2.0 * beta_sq >= rr and beta_sq > (tol * scale) ** 2:
            beta = beta_sq**0.5  # q_{j+1} = (r - V_j^T c) / beta_j in one pass
            line = coef[: j + 1].reshape(1, j + 1)
            ops.addmm(r_line, line, V[: j + 1], beta=1.0 / beta, alpha=-1.0 / beta, out=r_line)
        else:
            extra, beta = reorthogonalize(j, r, max(rr, 0.0) ** 0.5)
            alpha += extra
            if beta <= tol * scale:  # invariant subspace: T splits here, continue from a fresh direction
                if r_base is None:
                    r_base = hash_vector(xp, n, RESTART_SALT, dtype, dev)
                x = xp.roll(r_base, shift=j + 1)
                ops.mm(V[: j + 1], x.reshape(n, 1), out=coef[: j + 1].reshape(j + 1, 1))
                _, x_norm = reorthogonalize(j, x, norm(x))
                ops.mul(x, 1.0 / x_norm, out=r)
                beta = 0.0
            else:
                ops.mul(r, 1.0 / beta, out=r)
        alphas.append(alpha)
        betas.append(beta)
    return np.array(alphas), np.array(betas), V if keep_basis else None  # float64, also when empty
