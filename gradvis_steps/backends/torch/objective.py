"""The PyTorch Objective: loss, accuracy, gradient and exact Hessian-vector products at a flat vector.

The user's model is never mutated: the objective keeps its own eval-mode copy. Loss and accuracy run the
copy's own forward with its parameters turned into views of one flat "point" buffer, so a landscape point
is loaded with one copy (or formed in place by :meth:`TorchObjective.evaluate_many`) and costs one plain
forward pass (less on a plane: :mod:`.plane` serves the input layer from precomputed outputs), with the
loss (the run's, :class:`~.losses.TorchLoss`) and accuracy of many points reduced together; gradients and
Hessian-vector products call
``torch.func.functional_call`` on views of a differentiable flat vector instead. Every reduction is a sum over
samples divided by the number of samples (:class:`~.reduction.BatchReduction`), so each batch is weighted by its
size (an uneven last batch counts exactly as much as it should; the original GradVis multiplied HVPs by the number
of batches instead).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad

from ...core.layout import parameter_indices
from ...core.memory import budget_bytes, check_memory_budget, host_available_bytes, keep_freed_memory
from ...core.objective import HVP_MEMORY_MB, Evaluation
from ...core.parallel import MPIComm, SerialComm, shard_bounds
from ...losses import check_targets
from .affine_norm import batch_norm_as_affine
from .batched_points import BatchedPoints, GridEvaluator
from .flat import as_flat_vector, flatten_parameters, layout_of, unflatten, unflatten_buffers
from .losses import TorchLoss
from .plane import PlaneShortcut
from .point_hvp import TorchHessianOperator
from .point_hvp import batch_hvp as recomputed_batch_hvp
from .reduction import BatchReduction

#: The two exact ways to take a Hessian-vector product; ``"auto"`` picks one by timing both at the point.
HVP_MODES = ("forward_over_reverse", "double_backprop")
HVP_MODE_CHOICES = ("auto", *HVP_MODES)
#: ``"auto"`` takes forward-over-reverse only when it is at least this much faster than double backprop (the
#: default, whose products equal earlier results bitwise), so near ties do not flip between runs.
AUTO_MODE_MARGIN = 1.15
#: working memory (MiB) of a block of vector products under ``hvp_memory_mb="auto"`` (about one batch graph per
#: vector; a pinned budget gives blocks what its kept graphs leave instead)
AUTO_BLOCK_MB = 1024
#: logits (floats) kept for one batched loss/accuracy reduction over several points (16 MiB in float32)
LOGITS_BUFFER_ELEMENTS = 1 << 22


def choose_hvp_mode(seconds: dict[str, float]) -> str:
    """The mode ``"auto"`` keeps, given each mode's seconds per product: double backprop unless forward-over-reverse
    is faster by :data:`AUTO_MODE_MARGIN`."""
    faster = seconds["forward_over_reverse"] * AUTO_MODE_MARGIN < seconds["double_backprop"]
    return "forward_over_reverse" if faster else "double_backprop"


class TorchObjective:
    """Mean loss of ``model`` over ``(x, y)`` as a function of its flat trainable parameters.

    ``loss``: the run's loss spec (:mod:`gradvis_steps.losses`; None: cross-entropy); its targets are checked
    against the model's output width."""

    def __init__(
        self,
        model: nn.Module,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        *,
        batch_size: int = 1024,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        hvp_mode: str = "double_backprop",
        hvp_memory_mb: float | str = HVP_MEMORY_MB,
        grid_batching: str = "auto",
        data_comm: SerialComm | MPIComm | None = None,
        loss: dict | str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if hvp_mode not in HVP_MODE_CHOICES:
            raise ValueError(f"hvp_mode {hvp_mode!r} is not one of {HVP_MODE_CHOICES}")
        #: MiB the Hessian products at one point may keep, or "auto" (:meth:`hvp_budget_bytes`)
        self.hvp_memory_mb = check_memory_budget(hvp_memory_mb)
        keep_freed_memory()  # this object evaluates the model over and over: keep freed activations in the heap
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as inputs (and at least one): got {len(x)} and {len(y)}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        self.hvp_mode = hvp_mode
        #: how ``"auto"`` was resolved (:meth:`calibrate_hvp`), for the provenance of Hessian results
        self.hvp_calibration: dict | None = None
        self.batch_size = int(batch_size)
        self.module = copy.deepcopy(model).to(device=self.device, dtype=dtype).eval()
        self.layout = layout_of(model)
        self._initial = flatten_parameters(self.module, self.layout).to(dtype)
        # The copy's parameters become views of one flat buffer: writing a point there loads it into the model.
        self._point = self._initial.clone()
        params = dict(self.module.named_parameters())
        for spec in self.layout:
            params[spec.name].data = self._point[spec.slice].view(spec.shape)
        for p in self.module.parameters():  # the copy's own parameters are never used for gradients
            p.requires_grad_(False)
        self.buffers = {name: b for name, b in self.module.named_buffers()}
        # Hessian products take evaluation-mode batch norm as the affine map it is (affine_norm: same function,
        # cheaper double backward); a model without batch-norm modules skips the function mode's per-call cost
        self._hessian_context = batch_norm_as_affine if any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules()) else contextlib.nullcontext
        # Algorithm 4: in a data-parallel group this rank keeps only its shard of whole batches (on its device)
        n_samples = len(x)
        start, stop = (0, n_samples) if data_comm is None or data_comm.size == 1 else \
            shard_bounds(n_samples, self.batch_size, data_comm.size, data_comm.rank)
        self.x = torch.as_tensor(x[start:stop]).to(device=self.device, dtype=dtype)
        #: the run's loss (targets in the form it takes them)
        self.criterion = TorchLoss(loss)
        self.y = self.criterion.targets(y[start:stop], self.device, dtype)
        #: the evaluation set's batches and the size-weighted mean over them (the Hessian operator and the grid
        #: evaluator get it too); the one place where a data-parallel group's shards are summed
        self.reduction = BatchReduction(self.x, self.y, self.batch_size, n_samples=n_samples, comm=data_comm)
        with torch.no_grad():
            self._n_classes: int = int(self.module(self.x[:1]).shape[-1])
        check_targets(self.criterion.spec, y if isinstance(y, np.ndarray) else torch.as_tensor(y).cpu().numpy(),
                      self._n_classes)
        self._plane: PlaneShortcut | None = None  # made at the first plane_for
        #: evaluate_many's choice between the per-point path and the vectorized one (:mod:`.batched_points`)
        self.grid_evaluator = GridEvaluator(
            self.evaluate_per_point, BatchedPoints(self.module, self.layout, self.buffers, self.reduction.batches(),
                                                   self.criterion),
            self.plane_for, self.reduction.evaluations, self.device, self.dtype, grid_batching)

    # -- the grid evaluator's settings and record -------------------------------------------------
    @property
    def grid_batching_mode(self) -> str:
        """evaluate_many's path: "auto" | "vmap" | "per_point" (may be changed between calls)."""
        return self.grid_evaluator.mode

    @grid_batching_mode.setter
    def grid_batching_mode(self, mode: str) -> None:
        self.grid_evaluator.mode = mode

    @property
    def grid_batching(self) -> dict | None:
        """The path evaluate_many took, and why (None: not chosen yet), for provenance."""
        return self.grid_evaluator.choice

    @property
    def grid_memory_mb(self) -> float | None:
        """The memory budget of a vectorized call in MiB (None: ``batched_points.MEMORY_BUDGET_MB`` of the device
        type)."""
        return self.grid_evaluator.memory_mb

    @grid_memory_mb.setter
    def grid_memory_mb(self, mb: float | None) -> None:
        self.grid_evaluator.memory_mb = mb

    # -- conversion ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.layout.size

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def n_samples(self) -> int:
        """Samples of the evaluation set (every mean divides by it)."""
        return self.reduction.n_samples

    def from_numpy(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x)).to(device=self.device, dtype=self.dtype)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def initial_point(self) -> torch.Tensor:
        """The flat parameters the model was built with."""
        return self._initial.clone()

    def set_buffers(self, flat: np.ndarray, layout: list[dict] | str) -> None:
        """Use a checkpoint's buffers (batch-norm running statistics) for all later evaluations."""
        values = unflatten_buffers(flat, layout, self.device, float_dtype=self.dtype)
        if set(values) != set(self.buffers):
            raise ValueError(f"checkpoint buffers {sorted(values)} do not match the model's {sorted(self.buffers)}")
        with torch.no_grad():
            for name, value in values.items():
                self.buffers[name].copy_(value)

    # -- evaluation ---------------------------------------------------------------------------------
    def _logits(self, theta: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (unflatten(theta, self.layout), self.buffers), (xb,))

    def loss_sum(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The loss summed over the samples of one batch at ``theta`` (differentiable in ``theta``)."""
        return self.criterion.sum(self._logits(theta, xb), yb)

    def hessian_loss_sum(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """:meth:`loss_sum` for second derivatives: the same function, with evaluation-mode batch norm written as
        its affine map (:mod:`.affine_norm`), whose double backward is cheaper. Every Hessian product uses it, so
        kept-graph and recomputed products agree bitwise."""
        with self._hessian_context():
            return self.loss_sum(theta, xb, yb)

    def _evaluate_point(self, logits_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One forward pass of the point loaded in the module over the evaluation set, no host sync.

        With ``logits_out`` (``(n_samples, classes)``) the logits are only stored there, for
        :meth:`_reduce_logits` to turn several points' logits into losses and accuracies at once. Without it,
        the loss sum and the number of correct predictions are returned (0-d device tensors; several batches
        summed in float64): the path for evaluation sets whose logits are too large to keep."""
        if logits_out is not None:
            start = 0
            for xb, _ in self.reduction.batches():
                logits_out[start:start + len(xb)].copy_(self.module(xb))
                start += len(xb)
            return None
        loss = correct = None
        for xb, yb in self.reduction.batches():
            logits = self.module(xb)
            batch_loss = self.criterion.sum(logits, yb)
            batch_correct = self.criterion.correct(logits, yb)
            if loss is None:
                loss, correct = batch_loss, batch_correct
            else:
                loss = loss.to(torch.float64) + batch_loss
                correct = correct + batch_correct
        return loss, correct

    def _reduce_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss sums (float64) and correct counts of ``(points, n_samples, classes)`` logits, all points in a
        handful of kernels instead of a handful per point (cross-entropy: ``logsumexp(z) - z_y``, rather than
        ``log_softmax``, several times slower over a short class axis on CPUs)."""
        return self.criterion.sums(logits, self.y), self.criterion.correct(logits, self.y)

    def _points_per_reduction(self, n_points: int) -> int:
        """How many points' logits are kept for one :meth:`_reduce_logits` (0: too large, reduce per point)."""
        per_point = len(self.y) * self._n_classes
        return min(n_points, LOGITS_BUFFER_ELEMENTS // per_point)

    def _evaluate_loaded(self, form_point: Callable[[int], None], n_points: int) -> list[Evaluation]:
        """Loss and accuracy of ``n_points`` points, point ``p`` loaded into the module by ``form_point(p)``.

        Results stay on the device until one host sync at the end. Logits of up to
        :data:`LOGITS_BUFFER_ELEMENTS` floats are kept and reduced together, so beyond its forward pass a point
        costs one logits copy and a share of a few batched kernels."""
        losses = torch.empty(n_points, device=self.device, dtype=torch.float64)
        corrects = torch.empty(n_points, device=self.device, dtype=torch.float64)
        # inference mode rather than no_grad: no autograd bookkeeping (version counters, view tracking) per
        # kernel, a few percent of a small model's forward pass. Nothing made here leaves this method but floats.
        with torch.inference_mode():
            block = self._points_per_reduction(n_points)
            if block == 0:
                for p in range(n_points):
                    form_point(p)
                    losses[p], corrects[p] = self._evaluate_point()
            else:
                buffer = torch.empty((block, len(self.y), self._n_classes), device=self.device, dtype=self.dtype)
                for start in range(0, n_points, block):
                    stop = min(start + block, n_points)
                    for p in range(start, stop):
                        form_point(p)
                        self._evaluate_point(buffer[p - start])
                    losses[start:stop], corrects[start:stop] = self._reduce_logits(buffer[: stop - start])
            sums = torch.stack([losses, corrects], dim=1)
        return self.reduction.evaluations(sums)

    def evaluate(self, theta: torch.Tensor) -> Evaluation:
        """Mean loss and accuracy at ``theta``; one host sync at the end, none per batch."""
        theta = self.check(theta)
        return self._evaluate_loaded(lambda _: self._point.copy_(theta), 1)[0]

    def evaluate_many(
        self, center: torch.Tensor, directions: list[torch.Tensor], coeffs: np.ndarray
    ) -> list[Evaluation]:
        """Loss and accuracy at ``center + sum_k coeffs[p, k] * directions[k]`` for every row ``p``.

        Either point by point (:meth:`evaluate_per_point`) or many points in one vectorized forward pass
        (:mod:`.batched_points`), as ``grid_batching_mode`` says ("auto": the faster one, measured at the first
        call and recorded in ``grid_batching``). Results stay on the device until one host sync for the whole
        batch. The grid code calls this when present."""
        center = self.check(center)
        dirs = [self.check(d) for d in directions]
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(len(coeffs), -1)
        if coeffs.shape[1] != len(dirs):
            raise ValueError(f"coefficients have {coeffs.shape[1]} columns for {len(dirs)} directions")
        return self.grid_evaluator(center, dirs, coeffs)

    def plane_for(self, center: torch.Tensor, dirs: list[torch.Tensor]) -> PlaneShortcut | None:
        """The input-layer shortcut prepared for this plane, or None where it cannot serve it."""
        if self._plane is None:
            self._plane = PlaneShortcut(self.module, self.layout, [xb for xb, _ in self.reduction.batches()])
        return self._plane if self._plane.prepare(center, dirs) else None

    def evaluate_per_point(
        self, center: torch.Tensor, dirs: list[torch.Tensor], coeffs: np.ndarray
    ) -> list[Evaluation]:
        """:meth:`evaluate_many` one point at a time (``center`` and ``dirs`` already checked, ``coeffs`` a float64
        ``(points, len(dirs))`` table): each point is formed in place in the module's parameter
        buffer (no new model-sized tensor per point), its logits are reduced together with those of the other
        points: a grid point costs one forward pass plus ``k`` axpy updates, minus the input layer where
        :class:`~.plane.PlaneShortcut` can serve it from its pieces (made once per center and directions, reused
        by later calls with the same tensors)."""
        rows = coeffs.tolist()
        plane = self.plane_for(center, dirs)

        def form_point(p: int) -> None:
            if dirs:
                torch.add(center, dirs[0], alpha=rows[p][0], out=self._point)
            else:
                self._point.copy_(center)
            for c, d in zip(rows[p][1:], dirs[1:], strict=True):
                self._point.add_(d, alpha=c)
            if plane is not None:
                plane.set_point(rows[p])

        with plane.installed() if plane is not None else contextlib.nullcontext():
            return self._evaluate_loaded(form_point, len(rows))

    def loss(self, theta: torch.Tensor) -> float:
        return self.evaluate(theta).loss

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """Gradient of the mean loss (one backward pass per batch, accumulated on the device)."""
        theta = self.check(theta)
        return self.reduction.mean(theta, lambda _, xb, yb: grad(self.loss_sum)(theta, xb, yb))

    def hvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Exact ``H(theta) @ v`` of the mean loss (Pearlmutter's R-operator, paper section 2.2)."""
        theta, v = self.check(theta), self.check(v)
        mode = self._resolved_mode()
        return self.reduction.mean(theta, lambda _, xb, yb: self.batch_hvp(theta, v, xb, yb, mode))

    def hvp_operator(self, theta: torch.Tensor, params: Sequence[str] | None = None) -> TorchHessianOperator:
        """``v -> H(theta) v`` for many products at one point (Lanczos, SLQ), with ``matmat(V)`` for a block of
        vectors: each batch's gradient is computed once and kept with its graph while the graphs fit
        :meth:`hvp_budget_bytes`, so a product is one backward pass per batch instead of a forward and two backward
        passes; bitwise the same results as :meth:`hvp`. With ``hvp_mode="auto"`` not yet calibrated, double
        backprop.

        ``params`` (names of the layout): the principal submatrix ``H[S, S]`` of those parameters' entries ``S``
        (in layout order, ``dim`` = their size) instead: only they are differentiated, the others held at
        ``theta``."""
        if params is None:
            return self._operator(theta, self._resolved_mode())
        theta = self.check(theta).detach()
        index = torch.as_tensor(parameter_indices(self.layout, params), device=self.device)

        def block_loss_sum(s: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return self.hessian_loss_sum(theta.index_put((index,), s), xb, yb)  # differentiable in s only

        return TorchHessianOperator(block_loss_sum, self.reduction, theta[index], self.hvp_budget_bytes(),
                                    self._resolved_mode(), self._block_bytes(), buffers=self.buffers)

    def _operator(self, theta: torch.Tensor, mode: str) -> TorchHessianOperator:
        """The Hessian operator at ``theta`` in ``mode``, given what it needs of this objective."""
        return TorchHessianOperator(self.hessian_loss_sum, self.reduction, self.check(theta), self.hvp_budget_bytes(),
                                    mode, self._block_bytes(), buffers=self.buffers)

    def _block_bytes(self) -> float | None:
        """The working memory of a block product under the automatic budget: fixed, so a block's split (and its
        rounding) never depends on the memory free at the time; None: what the kept graphs leave of a fixed
        budget."""
        return AUTO_BLOCK_MB * 2**20 if self.hvp_memory_mb == "auto" else None

    def hvp_budget_bytes(self) -> float:
        """The memory an operator made now may keep: ``hvp_memory_mb``, or for "auto" half the memory available
        now (the device's free memory on a GPU, the host's otherwise) split between the ranks of this node. How
        many batches keep their graphs never changes a product's bits; the block size of ``matmat`` (and so the
        rounding of a block's batched kernels) would: under "auto" blocks get a fixed :data:`AUTO_BLOCK_MB` instead."""
        if self.hvp_memory_mb != "auto":
            return budget_bytes(self.hvp_memory_mb, 0)
        if self.device.type == "cuda":
            available = torch.cuda.mem_get_info(self.device)[0]
        else:
            available = host_available_bytes()
        return budget_bytes("auto", available)

    def _resolved_mode(self) -> str:
        return "double_backprop" if self.hvp_mode == "auto" else self.hvp_mode

    def calibrate_hvp(self, theta: torch.Tensor, block: int = 1, *, repeats: int = 2, force: bool = False) -> dict:
        """Resolve ``hvp_mode="auto"``: time a block of ``block`` products at ``theta`` in each mode (after one
        warm-up product each) and keep the faster, double backprop unless forward-over-reverse wins by
        :data:`AUTO_MODE_MARGIN`. Returns (and keeps in :attr:`hvp_calibration`) the choice and the timings; a fixed
        mode is returned as chosen, untimed. On a CPU "auto" for single vectors is double backprop, untimed, unless
        ``force``. Timing makes the choice, so pin the mode to reproduce timed choices bitwise."""
        record = self._calibration(theta, block, repeats, force)
        budget = self.hvp_budget_bytes()  # recorded: it sets matmat's block size, and so a block's rounding
        record["memory_mb"] = round(budget / 2**20, 1) if math.isfinite(budget) else "unlimited"
        if record["chosen_by"] != "config":
            self.hvp_calibration = record
        return record

    def _calibration(self, theta: torch.Tensor, block: int, repeats: int, force: bool) -> dict:
        if self.hvp_mode != "auto":
            return {"mode": self.hvp_mode, "chosen_by": "config"}
        if self.device.type == "cpu" and block <= 1 and not force:
            # one vector at a time on a CPU: double backprop through kept graphs measured faster for LeNet and
            # ResNet-20 (bench/README.md); untimed, so two runs of one config give the same bits
            self.hvp_mode = "double_backprop"
            return {"mode": self.hvp_mode, "chosen_by": "auto on a CPU (untimed)"}
        generator = torch.Generator().manual_seed(0)
        V = torch.randn(max(block, 1), self.dim, generator=generator, dtype=torch.float64).to(self.device, self.dtype)
        seconds = {}
        for mode in HVP_MODES:
            operator = self._operator(theta, mode)

            def product(op: TorchHessianOperator = operator) -> torch.Tensor:
                return op.matmat(V) if len(V) > 1 else op(V[0])

            product()  # warm-up: lazy kernel set-up, vmap tracing, allocator growth
            times = []
            for _ in range(repeats):
                self._synchronize()
                start = time.perf_counter()
                product()
                self._synchronize()
                times.append(time.perf_counter() - start)
            seconds[mode] = min(times) / len(V)
            del operator
        self.hvp_mode = choose_hvp_mode(seconds)
        return {"mode": self.hvp_mode, "chosen_by": "calibration", "block": len(V), "seconds_per_vector": seconds,
                "margin": AUTO_MODE_MARGIN}

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def batch_hvp(self, theta: torch.Tensor, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                  mode: str) -> torch.Tensor:
        """``H_b(theta) @ v`` of one batch's loss sum (:meth:`loss_sum`), in ``mode`` (one of :data:`HVP_MODES`),
        recomputed from scratch: :meth:`hvp` sums these over the batches."""
        return recomputed_batch_hvp(self.hessian_loss_sum, theta, v, xb, yb, mode)

    def check(self, theta: torch.Tensor) -> torch.Tensor:
        """``theta`` as a flat vector of this objective (a host array is copied over); a ValueError if its shape
        is not ``(dim,)``."""
        return as_flat_vector(theta, self.dim, self.device, self.dtype)
