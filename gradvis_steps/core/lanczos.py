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

A backend may register a loop of its own for its device arrays (:func:`register_device_loop`): the torch backend
replays each step of the same process as one CUDA graph on CUDA tensors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace, to_device
from array_api_compat import device as array_device
from scipy.linalg import eigh_tridiagonal

__all__ = [
    "LanczosResult",
    "RitzResult",
    "clear_lanczos_workspace",
    "lanczos",
    "register_device_loop",
    "ritz_pairs",
    "tridiagonal_eigh",
    "to_numpy",
    "from_numpy",
]

Array = Any  # a numpy array or a backend tensor (array-API compatible)
MatVec = Callable[[Array], Array]
# A backend's own loop for its device arrays: (matvec, v0, m, breakdown_tol, keep_basis) -> (alpha, beta,
# basis or None), the same process and results as ``_lanczos_device``.
DeviceLoop = Callable[[MatVec, Array, int, "float | None", bool], "tuple[Array, Array, Array | None]"]

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
    """Core loop for device arrays; returns (alpha (m,), beta (m-1,), basis (m, n)) without a host sync.

    The lockstep loop (:func:`.lanczos_lockstep.lanczos_lockstep`) with one chain: classical Gram-Schmidt against the
    whole basis done twice ("twice is enough"), a breakdown handled with ``where`` instead of a host-side branch.
    """
    from .lanczos_lockstep import lanczos_lockstep  # imports this module's helpers

    _setup(v0, m, breakdown_tol)  # the one-vector checks and messages

    def matmat(block: Array) -> Array:
        return array_namespace(block).stack([_plain(matvec(block[0, ...]))])

    alpha, beta, basis = lanczos_lockstep(matmat, array_namespace(v0).stack([v0]), m, breakdown_tol)
    return alpha[0, ...], beta[0, ...], basis[0, ...]


def _is_torch(x: Array) -> bool:
    return hasattr(x, "addmv_")


def _host_ops(x: Array) -> SimpleNamespace:
    """The array operations of the host loop, with torch's signatures: ``dot(x, y)``, ``mul(x, a, out=)``,
    ``mm(A, B, out=)`` and ``addmm(x, c, M, beta=, alpha=, out=)``.

    For torch tensors these are torch's own functions, looked up once, so no Python frame sits between the loop and
    a kernel. Each step does all its vector work through ``mm`` and ``addmm`` (the BLAS GEMM entry, ``out=`` writing
    in place): after a matvec has run, the code of every distinct function a step calls starts from cold caches, so
    two distinct functions called twice each cost less than four different ones (figures in bench/README.md). For
    numpy arrays, small adapters."""
    if _is_torch(x):
        import torch

        return SimpleNamespace(dot=torch.dot, mul=torch.mul, mm=torch.mm, addmm=torch.addmm)
    return SimpleNamespace(dot=np.dot, mul=_np_mul, mm=_np_mm, addmm=_np_addmm)


def _np_mul(x: np.ndarray, a: float, *, out: np.ndarray) -> np.ndarray:
    """``out = a x``."""
    return np.multiply(x, a, out=out)


def _np_mm(A: np.ndarray, B: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """``out = A @ B``."""
    return np.matmul(A, B, out=out)


def _np_addmm(x: np.ndarray, c: np.ndarray, M: np.ndarray, *, beta: float, alpha: float, out: np.ndarray) -> np.ndarray:
    """``out = beta x + alpha c @ M`` (``out`` may be ``x``, not ``M``)."""
    product = c @ M
    np.multiply(x, beta, out=out)
    out += alpha * product
    return out


def _on_host(v: Array) -> bool:
    """True for arrays in host memory (numpy, torch CPU tensors): reading a scalar there costs no device sync."""
    if isinstance(v, np.ndarray):
        return True
    return str(array_device(v)).split(":")[0] == "cpu"


def _scalar_reader(x: Array) -> Any:
    """A host array's values for Python, read by index or by ``[:i].tolist()``: a ``memoryview`` where the dtype
    allows (float32/64), whose reads are CPython's own code (it stays warm while a matvec runs, where the backend's
    ``tolist`` starts from cold caches); otherwise a numpy view (e.g. float16, which a memoryview cannot read)."""
    view = x.numpy() if _is_torch(x) else x
    try:
        reader = memoryview(view)
        reader[:1].tolist()
    except (NotImplementedError, TypeError, ValueError):
        return view
    return reader


class _StepViews:
    """The views that step j of the host loop works on. Of the basis ``V``: ``q = V[j]`` (the matvec's input),
    ``pair = V[j-1 : j+1]`` (``V[:1]`` at j = 0), ``r = V[j+1]`` (also as a ``(1, n)`` line and an ``(n, 1)``
    column), ``rows = V[:j+2]`` and ``head = V[:j+1]``. Of the coefficient buffers: the pair's as a column and a
    line, ``coef[:j+2]`` as a column (``rows @ r``) and ``coef[:j+1]`` as a line and a column (over ``head``). The
    last step has only ``q`` and the pair's views."""

    __slots__ = ("q", "pair", "pair_column", "pair_line", "r", "r_line", "r_column", "rows", "rows_coef", "head",
                 "head_coef_line", "head_coef_column")

    def __init__(self, V: Array, pair_coef: Array, coef: Array, j: int) -> None:
        m, n = V.shape
        k = min(j, 1) + 1  # rows in the pair
        self.q, self.pair = V[j], V[j + 1 - k : j + 1]
        self.pair_column, self.pair_line = pair_coef[:k].reshape(k, 1), pair_coef[:k].reshape(1, k)
        if j + 1 < m:
            self.r = V[j + 1]
            self.r_line, self.r_column = self.r.reshape(1, n), self.r.reshape(n, 1)
            self.rows, self.rows_coef = V[: j + 2], coef[: j + 2].reshape(j + 2, 1)
            self.head = V[: j + 1]
            self.head_coef_line = coef[: j + 1].reshape(1, j + 1)
            self.head_coef_column = coef[: j + 1].reshape(j + 1, 1)


class _HostWorkspace:
    """The basis ``V`` (m, n) of a host run, its coefficient buffers and every step's :class:`_StepViews`.

    Each view is a backend call (a torch slice or reshape costs about as much as a small kernel call). Made in the
    loop, the dozen a step needs would run right after the matvec, from cold caches; made up front they cost the
    same again for every run. Either way that is a measurable share of a step's non-matvec time (bench/README.md),
    so the workspace is kept for the next run of its shape: SLQ runs its k starting vectors, and a spectrum run
    its checkpoints, at one shape. Every row and coefficient is written before it is read, so nothing a previous
    run left is ever used."""

    def __init__(self, xp: Any, n: int, m: int, dtype: Any, dev: Any) -> None:
        self.key = _workspace_key(xp, n, m, dtype, dev)
        self.V = V = xp.empty((m, n), dtype=dtype, device=dev)  # no memset: see above
        self.pair_coef = xp.empty((2,), dtype=dtype, device=dev)  # (q_{j-1}.w, q_j.w) of the local pass
        self.coef = xp.empty((m + 1,), dtype=dtype, device=dev)  # (q_0.x, ..., q_j.x) of a Gram-Schmidt pass, r.r
        self.pair_values, self.coef_values = _scalar_reader(self.pair_coef), _scalar_reader(self.coef)
        self.steps = [_StepViews(V, self.pair_coef, self.coef, j) for j in range(m)]


# Bases up to this size are kept between runs; beyond it the views are a vanishing share of the matvecs, and holding
# the memory after a run would not be worth it.
_WORKSPACE_KEEP_BYTES = 256 * 2**20
_kept_workspace = threading.local()  # one per thread: two threads never share a basis


def _workspace_key(xp: Any, n: int, m: int, dtype: Any, dev: Any) -> tuple:
    return (xp.__name__, n, m, str(dtype), str(dev))


def _take_workspace(xp: Any, n: int, m: int, dtype: Any, dev: Any) -> _HostWorkspace:
    """This thread's kept workspace if it has this shape, else a new one. The slot is emptied while a run holds it,
    so a run nested in the matvec builds its own."""
    ws, _kept_workspace.ws = getattr(_kept_workspace, "ws", None), None  # the old basis is freed before a new one
    if ws is None or ws.key != _workspace_key(xp, n, m, dtype, dev):
        ws = _HostWorkspace(xp, n, m, dtype, dev)
    return ws


def _return_workspace(ws: _HostWorkspace) -> None:
    """Keep a finished run's workspace for the next run of its shape, unless it is too large to hold."""
    m, n = ws.V.shape
    if ws.V.itemsize * m * n <= _WORKSPACE_KEEP_BYTES:
        _kept_workspace.ws = ws


def clear_lanczos_workspace() -> None:
    """Release the basis the host Lanczos loop keeps for the next run of the same shape (this thread's)."""
    _kept_workspace.ws = None


def _lanczos_host(
    matvec: MatVec, v0: Array, m: int, breakdown_tol: float | None = None, keep_basis: bool = True
) -> tuple[Array, Array, Array | None]:
    """The same Lanczos process as :func:`_lanczos_device` for arrays in host memory, where reading a scalar and
    branching on it is free, so a step does only the reorthogonalization work that rounding calls for.

    Step j, with ``w = A q_j``:

    1. Local pass: ``b = q_{j-1}.w`` (beta_{j-1} in exact arithmetic) and ``a = q_j.w`` from one product with rows
       j-1 and j (adjacent in memory: one read), then the three-term recurrence ``r = w - a q_j - b q_{j-1}``,
       written straight into row j+1 (the matvec's output is never modified).
    2. Global pass, classical Gram-Schmidt against rows 0..j (it only removes rounding drift): one product of rows
       0..j+1 with r gives the coefficients ``c_i = q_i.r`` and, from row j+1 (which is r), ``||r||^2``.
    3. ``beta_j^2 = ||r||^2 - ||c||^2`` by Pythagoras (``r - V_j^T c`` is orthogonal to the rows). If that kept at
       least half of ``||r||^2`` (the Kahan-Parlett "twice is enough" test, decided before the update), one update
       pass ``q_{j+1} = (r - V_j^T c) / beta_j`` ends the step. Otherwise the norm is taken explicitly after the
       update, and a second Gram-Schmidt pass runs if the test still fails. A breakdown (``beta_j <= tol *
       max_i ||A q_i||``) records ``beta_j = 0`` and continues from the pseudo-random direction
       ``roll(r_base, j + 1)``, orthogonalized against the basis.

    So the basis is read twice per step, through two calls each of ``mm`` and ``addmm``; ``alpha_j = a + c_j``.
    A run that hands out its basis (``keep_basis``) builds a workspace of its own; otherwise it uses this thread's
    kept :class:`_HostWorkspace` and returns ``None`` for the basis.
    """
    xp, n, m, dtype, dev, tol = _setup(v0, m, breakdown_tol)
    ops = _host_ops(v0)
    ws = _HostWorkspace(xp, n, m, dtype, dev) if keep_basis else _take_workspace(xp, n, m, dtype, dev)
    V, pair_values, coef_values = ws.V, ws.pair_values, ws.coef_values

    def norm(x: Array) -> float:
        # sqrt(x . x): one BLAS dot, cheaper on a CPU than the overflow-safe norm kernel (unit-sized vectors here)
        return float(ops.dot(x, x)) ** 0.5

    def reorthogonalize(j: int, x: Array, x_line: Array, x_column: Array, before: float) -> tuple[float, float]:
        """``x -= V_j^T c`` in place (c, x's coefficients over rows 0..j, already in the buffer), then a second
        Gram-Schmidt pass if that lost more than half of ``before**2`` (``before = ||x||``). Returns the second
        pass's coefficient of q_j (0 without one) and ``||x||`` after."""
        s = ws.steps[j]
        ops.addmm(x_line, s.head_coef_line, s.head, beta=1.0, alpha=-1.0, out=x_line)
        after = norm(x)
        if after >= before / 2**0.5:
            return 0.0, after
        ops.mm(s.head, x_column, out=s.head_coef_column)
        extra = float(coef_values[j])
        ops.addmm(x_line, s.head_coef_line, s.head, beta=1.0, alpha=-1.0, out=x_line)
        return extra, norm(x)

    v0 = _plain(v0)
    nrm0 = float(xp.linalg.vector_norm(v0))  # overflow-safe: v0 is the caller's, of any scale
    if nrm0 > 0:
        ops.mul(v0, 1.0 / nrm0, out=V[0])
    else:
        r0 = _hash_vector(xp, n, 0x5EED, dtype, dev)
        ops.mul(r0, 1.0 / norm(r0), out=V[0])

    alphas: list[float] = []
    betas: list[float] = []
    r_base = None  # restart directions, made at the first breakdown
    scale = 0.0  # running max of ||A q_j||, a lower bound of ||A||
    for j, s in enumerate(ws.steps):
        w = _plain(matvec(s.q))
        # 1. local pass over q_{j-1} and q_j (q_0 alone at j = 0)
        ops.mm(s.pair, w.reshape(n, 1), out=s.pair_column)
        a = float(pair_values[min(j, 1)])
        if j == m - 1:  # last step: only the diagonal entry is needed
            alphas.append(a)
            break
        b = float(pair_values[0]) if j else 0.0
        ops.addmm(w.reshape(1, n), s.pair_line, s.pair, beta=1.0, alpha=-1.0, out=s.r_line)
        # 2. global pass: c_i = q_i.r for i <= j, and r.r from row j + 1
        ops.mm(s.rows, s.r_column, out=s.rows_coef)
        *c, rr = coef_values[: j + 2].tolist()
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
            ops.addmm(s.r_line, s.head_coef_line, s.head, beta=1.0 / beta, alpha=-1.0 / beta, out=s.r_line)
        else:
            extra, beta = reorthogonalize(j, s.r, s.r_line, s.r_column, max(rr, 0.0) ** 0.5)
            alpha += extra
            if beta <= tol * scale:  # invariant subspace: T splits here, continue from a fresh direction
                if r_base is None:
                    r_base = _hash_vector(xp, n, 0xB10C, dtype, dev)
                x = xp.roll(r_base, shift=j + 1)
                x_line, x_column = x.reshape(1, n), x.reshape(n, 1)
                ops.mm(s.head, x_column, out=s.head_coef_column)
                _, x_norm = reorthogonalize(j, x, x_line, x_column, norm(x))
                ops.mul(x, 1.0 / x_norm, out=s.r)
                beta = 0.0
            else:
                ops.mul(s.r, 1.0 / beta, out=s.r)
        alphas.append(alpha)
        betas.append(beta)
    if keep_basis:
        return np.array(alphas), np.array(betas), V  # float64, also when empty
    _return_workspace(ws)
    return np.array(alphas), np.array(betas), None


_device_loops: list[tuple[Callable[[Array], bool], DeviceLoop]] = []


def register_device_loop(accepts: Callable[[Array], bool], loop: DeviceLoop) -> None:
    """Let a backend run Lanczos on the device arrays ``accepts(v0)`` picks with a loop of its own (the torch
    backend registers a CUDA-graph loop: one graph launch per step instead of ~25 kernel launches from Python).
    Later registrations take precedence; arrays no loop accepts take :func:`_lanczos_device`."""
    _device_loops.insert(0, (accepts, loop))


def _run_loop(
    matvec: MatVec, v0: Array, m: int, breakdown_tol: float | None, keep_basis: bool
) -> tuple[Array, Array, Array | None]:
    """Dispatch to the loop for ``v0``'s kind of array: host, a registered device loop, or the generic one."""
    if _on_host(v0):
        return _lanczos_host(matvec, v0, m, breakdown_tol, keep_basis)
    for accepts, loop in _device_loops:
        if accepts(v0):
            return loop(matvec, v0, m, breakdown_tol, keep_basis)
    return _lanczos_device(matvec, v0, m, breakdown_tol)


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
    about half the reorthogonalization work and, when the basis is not returned, keeps it for the next run of
    the same shape (:func:`clear_lanczos_workspace` releases it); a backend may supply its own device loop
    (:func:`register_device_loop`).
    """
    alpha, beta, V = _run_loop(matvec, v0, m, breakdown_tol, return_basis)
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
    if not (np.isfinite(alpha).all() and np.isfinite(beta).all()):
        raise ValueError("the Lanczos coefficients are not finite: the operator's products overflow (at a point where "
                         "training diverged?)")
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
    (ordered by ``|theta - target|``). Residuals are computed with k extra matvecs (one block product where ``matvec``
    has a ``matmat``), so they are true residuals rather than the Lanczos estimate ``beta_m |u_m|``.
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
    matmat = getattr(matvec, "matmat", None)  # the k products as one block where the operator can
    products = _plain(matmat(Y)) if matmat is not None else xp.stack([_plain(matvec(Y[i, ...])) for i in range(k)])
    residuals = to_numpy(xp.linalg.vector_norm(products - th[:, None] * Y, axis=1)).astype(np.float64)
    return RitzResult(values=values, vectors=Y, residuals=residuals)
