"""The torch backend's Lanczos kernels (:func:`gradvis_steps.core.lanczos.register_kernel`): torch's functions for
the host loop on CPU tensors, and on CUDA tensors a loop whose step is replayed as one captured CUDA graph.

The reference algorithm (``core.lanczos.reference_lanczos``) issues about 25 small kernels per step from Python; for
a model whose HVP is itself launch-bound (a small network such as LeNet, whose HVP the CPU issues kernel by kernel)
those launches are a large share of the SLQ time (figures in bench/README.md). Here a step is written against static
buffers, with the step index ``j`` held in a device tensor (read by ``index_select``/``index_copy_``, advanced in
place), so the same kernels serve every step and are captured once: a step then costs the copy of the HVP into the
static input and one graph launch.

The mathematics is the reference's (paper Algorithm 2's Lanczos, eq. 6): classical Gram-Schmidt against the whole
basis done twice, ``alpha_j`` the summed coefficients of ``q_j``, ``beta_j`` the norm of the remainder, and a
breakdown (``beta_j <= tol * max ||A q_i||``) recorded as ``beta_j = 0`` with the step continued from an
orthogonalized pseudo-random direction, chosen on the device (no host branch, no sync). The products run over a
leading block of rows rounded up to a bucket size, not over exactly ``j + 1`` rows: rows past ``j`` are still zero,
so they add nothing, and one graph per bucket (at most ~10) covers all steps. Buffers and graphs are kept for the
next run of the same shape (SLQ runs k starting vectors in a row); :func:`clear_lanczos_graphs` releases them.

On CPU tensors the same steps run eagerly (no capture) when :func:`graph_lanczos` is called directly: that is how
the CPU-only tests check this code path. Set ``GRADVIS_CUDA_GRAPHS=0`` to make CUDA tensors take the reference.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
from array_api_compat import array_namespace

from ...core.arrays import RESTART_SALT, START_SALT, hash_vector, plain
from ...core.lanczos import breakdown_tolerance, lanczos_steps, register_kernel
from ...core.lanczos_host import HostOps, host_lanczos

__all__ = ["TORCH_HOST_OPS", "clear_lanczos_graphs", "graph_lanczos", "set_cuda_graphs"]

#: torch's own functions for the host loop, looked up once: no Python frame between the loop and a kernel, and
#: ``addmm`` is one GEMM (figures in bench/README.md)
TORCH_HOST_OPS = HostOps(dot=torch.dot, mul=torch.mul, mm=torch.mm, addmm=torch.addmm)

_MAX_GRAPHS = 10  # buckets per (n, m): bounds capture time; a bucket pads at most m / 10 rows
_CACHE_SIZE = 2  # kept shapes: SLQ and eigendirections of one model, each with its own m
_enabled = os.environ.get("GRADVIS_CUDA_GRAPHS", "1") != "0"


def set_cuda_graphs(enabled: bool) -> bool:
    """Turn the CUDA-graph loop on or off for later runs (off: CUDA tensors take the reference loop).
    Returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


class _StaticLanczos:
    """Static buffers of an m-step Lanczos run on n-vectors, the step that works on them, and its graphs."""

    def __init__(self, n: int, m: int, dtype: torch.dtype, device: torch.device, tol: float) -> None:
        self.n, self.m, self.tol = n, m, tol
        self.capture = device.type == "cuda"
        self.bucket = max(8, math.ceil(m / _MAX_GRAPHS))
        zeros = dict(dtype=dtype, device=device)
        self.V = torch.zeros((m, n), **zeros)  # basis rows; rows past the current step stay zero
        self.W = torch.zeros((2, n), **zeros)  # [A q_j; restart direction], orthogonalized in place
        # q_i . A q_j of both Gram-Schmidt passes, row j per step (alpha_j = the two diagonals' sum, at the end)
        self.coef = torch.zeros((2, m, m), **zeros)
        self.beta = torch.zeros((max(m - 1, 0),), **zeros)
        self.last_alpha = torch.zeros((), **zeros)
        self.scale = torch.zeros((), **zeros)  # running max of ||A q_j||, a lower bound of ||A||
        self.steps_first = torch.arange(2, device=device)  # [j, j + 1] at j = 0
        self.steps = self.steps_first.clone()  # [j, j + 1] as index tensors
        # Restart direction of step j: a pseudo-random vector rolled by j + 1 (the reference's choice), read
        # as a gather from two copies of it at indices that move down by one per step: no modulo per step.
        xp = array_namespace(self.V)
        r0 = hash_vector(xp, n, START_SALT, dtype, device)  # the start when v0 is zero (the reference's choice)
        self.zero_start = r0 / torch.linalg.vector_norm(r0)
        r_base = hash_vector(xp, n, RESTART_SALT, dtype, device)
        self.r_twice = torch.cat([r_base, r_base])
        index = torch.int32 if 2 * n < 2**31 else torch.int64
        self.restart_first = torch.arange(n - 1, 2 * n - 1, dtype=index, device=device)
        self.restart_index = self.restart_first.clone()
        # views made once: the host loop does nothing per step but the matvec, one copy and one replay
        self.rows = [self.V[i] for i in range(m)]
        self.w_in = self.W[0]
        self.blocks = [min(m, -(-(j + 1) // self.bucket) * self.bucket) for j in range(m - 1)]
        self.replays: list[Callable[[], None] | None] = [None] * max(m - 1, 0)
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.failed = False

    def step(self, rows: int) -> None:
        """One Lanczos step on ``W[0] = A q_j`` (j = ``steps[0]``): alpha_j, beta_j, q_{j+1}; advances j.
        Only fixed-shape kernels on the buffers, so it can be captured once and replayed for every j; the
        products run over the first ``rows`` basis rows (rows past j are zero and add nothing)."""
        V, W = self.V, self.W
        j, j1 = self.steps[0:1], self.steps[1:2]
        head = V[:rows]
        torch.maximum(self.scale, torch.linalg.vector_norm(W[0]), out=self.scale)
        torch.index_select(self.r_twice, 0, self.restart_index, out=W[1])
        self.restart_index.sub_(1)
        c1 = W @ head.T  # classical Gram-Schmidt, pass 1 ...
        W.addmm_(c1, head, alpha=-1.0)
        c2 = W @ head.T  # ... and pass 2: twice is enough
        W.addmm_(c2, head, alpha=-1.0)
        self.coef[0, :, :rows].index_copy_(0, j, c1[0:1])
        self.coef[1, :, :rows].index_copy_(0, j, c2[0:1])
        norms = torch.linalg.vector_norm(W, dim=1)
        beta = norms[0]
        broke = beta <= self.tol * self.scale  # invariant subspace: T splits here
        q = torch.where(broke, W[1] / norms[1], W[0] / torch.where(broke, 1.0, beta))
        self.beta.index_copy_(0, j, torch.where(broke, 0.0, beta).reshape(1))
        V.index_copy_(0, j1, q.reshape(1, self.n))
        self.steps.add_(1)

    def capture_step(self, j: int) -> None:
        """Run step j for real, then capture its block's step as a graph for every later step of that block
        (capturing executes nothing, so the state stays right). Without CUDA, or if capture fails: eager."""
        rows = self.blocks[j]
        if not self.capture or self.failed:
            self.step(rows)
            return
        # first use of this block: lazy cuBLAS/allocator set-up must happen outside the capture (a side stream)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step(rows)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self.step(rows)
        except RuntimeError as error:  # e.g. a capture-incompatible allocator setting: stay eager
            self.failed = True
            warnings.warn(f"CUDA graph capture of the Lanczos step failed ({error}); running it eagerly",
                          RuntimeWarning, stacklevel=3)
            return
        for i, block in enumerate(self.blocks):
            if block == rows:
                self.replays[i] = graph.replay

    def run(self, matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor) -> None:
        """m Lanczos steps from v0 (any nonzero scale; a zero v0 starts from a pseudo-random vector)."""
        V, m, rows, w_in, replays = self.V, self.m, self.rows, self.w_in, self.replays
        V.zero_()
        self.steps.copy_(self.steps_first)
        self.restart_index.copy_(self.restart_first)
        self.scale.zero_()
        v0 = plain(v0)
        nrm0 = torch.linalg.vector_norm(v0)
        ok0 = nrm0 > 0
        V[0].copy_(torch.where(ok0, v0 / torch.where(ok0, nrm0, 1.0), self.zero_start))
        for j in range(m - 1):
            w_in.copy_(plain(matvec(rows[j])))
            replay = replays[j]
            if replay is None:
                self.capture_step(j)
            else:
                replay()
        # last step: only the diagonal entry is needed
        torch.dot(rows[m - 1], plain(matvec(rows[m - 1])), out=self.last_alpha)

    def alpha(self) -> torch.Tensor:
        """alpha_j = q_j . A q_j as both Gram-Schmidt passes found it (the last one from its own dot)."""
        m = self.m
        inner = torch.diagonal(self.coef[0], 0)[: m - 1] + torch.diagonal(self.coef[1], 0)[: m - 1]
        return torch.cat([inner, self.last_alpha.reshape(1)])


_cache: OrderedDict[tuple, _StaticLanczos] = OrderedDict()


def clear_lanczos_graphs() -> None:
    """Release the kept buffers and CUDA graphs (the basis of the largest run, m x n, is among them)."""
    _cache.clear()


def graph_lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    m: int,
    breakdown_tol: float | None = None,
    keep_basis: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """m Lanczos steps with full reorthogonalization from ``v0``: (alpha (m,), beta (m-1,), basis (m, n) or None)
    as device tensors of v0's dtype, without a host sync. On CUDA each step is one graph launch; elsewhere eager."""
    if v0.ndim != 1:
        raise ValueError(f"v0 must be a 1-D vector, got shape {tuple(v0.shape)}")
    m = lanczos_steps(m, v0.shape[0])
    return _graph_kernel(matvec, v0, m, breakdown_tolerance(torch, v0.dtype, breakdown_tol), keep_basis)


def _graph_kernel(
    matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, m: int, tol: float, keep_basis: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`graph_lanczos` with m capped and the absolute tolerance: the kernel registered for CUDA tensors."""
    n, dtype, dev = int(v0.shape[0]), v0.dtype, v0.device
    key = (n, m, dtype, str(dev), tol)
    # out of the cache while it runs, so a run nested in the matvec builds its own buffers instead of sharing these
    state = _cache.pop(key, None)
    if state is None:
        state = _StaticLanczos(n, m, dtype, torch.device(dev), tol)
    # streams and graphs belong to the current CUDA device: make it v0's (a no-op in the usual single-GPU case)
    with torch.cuda.device(state.V.device) if state.capture else contextlib.nullcontext():
        state.run(matvec, v0)
    _cache[key] = state  # most recently used last
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    # copies: the buffers are reused by the next run of this shape
    return state.alpha(), state.beta.clone(), state.V.clone() if keep_basis else None


def _on_cuda(v0: object) -> bool:
    return _enabled and isinstance(v0, torch.Tensor) and v0.is_cuda


def _on_cpu(v0: object) -> bool:
    return isinstance(v0, torch.Tensor) and v0.device.type == "cpu"


register_kernel(_on_cpu, partial(host_lanczos, TORCH_HOST_OPS))
register_kernel(_on_cuda, _graph_kernel)
