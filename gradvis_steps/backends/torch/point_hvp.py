"""Hessian-vector products at one fixed point: through kept gradient graphs, one vector or a block at a time.

Lanczos and SLQ (paper section 2.2, Algorithm 2) multiply the Hessian at one point by hundreds of vectors. A
plain HVP (Pearlmutter's R-operator by double backpropagation) runs, per batch, a forward pass, a backward pass
that builds the gradient's graph, and a backward pass through that graph. The first two do not depend on the
vector, so :class:`TorchHessianOperator` runs them once per batch and keeps the gradient with its graph: each
product is then one backward pass per batch, with bitwise the same result. Graphs take memory (the activations, and
what the first backward saves for the second), so they are kept only while their total fits a budget; the other
batches are recomputed per product (:func:`batch_hvp`), as :meth:`TorchObjective.hvp
<.objective.TorchObjective.hvp>` does. Both sum the batches' products with the objective's
:class:`~.reduction.BatchReduction`, in the same order: the operator owns its loop through
:meth:`BatchReduction.mean <.reduction.BatchReduction.mean>` and one hook, :meth:`TorchHessianOperator.batch_product`.
It is given what it needs (the batch loss, the reduction, the point, the buffers to watch), never the objective.

:meth:`TorchHessianOperator.matmat` multiplies a block of vectors ``V`` (g, n) at once, the product lockstep SLQ
takes per Lanczos step: one batched backward pass through each kept graph (``is_grads_batched``: autograd vmaps the
backward over the block), or, in forward-over-reverse mode, one vmapped forward-mode derivative of the gradient.
A GPU runs the block in about the time of one vector's kernels when one vector does not fill it. The block is
split into sub-blocks whose working memory (about one batch's graph per vector) fits the same budget; the split
depends only on the budget and the model, so the same inputs always give the same numbers.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping

import torch
from torch.func import grad, jvp, vmap

from .flat import as_flat_vector
from .reduction import BatchReduction

#: ``loss_sum(theta, x_b, y_b)``: the loss summed over one batch's samples, differentiable in ``theta``
LossSum = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def forward_over_reverse(loss_sum: LossSum, theta: torch.Tensor, v: torch.Tensor,
                         xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """``d/de grad(L)(theta + e v)`` at e=0: the forward-mode derivative of the reverse-mode gradient (one batch)."""
    return jvp(lambda t: grad(loss_sum)(t, xb, yb), (theta,), (v,))[1]


def batch_hvp(loss_sum: LossSum, theta: torch.Tensor, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
              mode: str) -> torch.Tensor:
    """``H_b(theta) @ v`` of one batch's ``loss_sum``, recomputed from scratch, in ``mode``: ``"forward_over_reverse"``
    or ``"double_backprop"`` (Pearlmutter's R-operator: the gradient with its graph, then a backward pass through it
    with ``v`` as the output gradient)."""
    if mode == "forward_over_reverse":
        return forward_over_reverse(loss_sum, theta, v, xb, yb)
    t = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_sum(t, xb, yb), t, create_graph=True)
        (hv,) = torch.autograd.grad(g, t, grad_outputs=v)
    return hv


class TorchHessianOperator:
    """``v -> H(theta) v`` (and ``V -> V H(theta)`` by rows) of the mean loss at one ``theta``: the operator the
    Lanczos loops call.

    ``loss_sum``: one batch's loss sum (the objective's :meth:`~.objective.TorchObjective.hessian_loss_sum`);
    ``reduction``: the evaluation batches and their size-weighted mean; ``buffers``: tensors the loss reads besides
    ``theta`` (batch-norm statistics), watched so that a product after they change raises instead of mixing old and
    new kept graphs. ``graph_bytes`` is the memory the kept graphs take, ``kept_batches`` how many batches have
    theirs, ``block_size`` how many vectors :meth:`matmat` multiplies in one batched pass. The point is copied, so
    changing the caller's ``theta`` afterwards changes nothing.
    """

    def __init__(self, loss_sum: LossSum, reduction: BatchReduction, theta: torch.Tensor, budget_bytes: float,
                 mode: str = "double_backprop", block_bytes: float | None = None, *,
                 buffers: Mapping[str, torch.Tensor] | None = None) -> None:
        self._loss_sum = loss_sum
        self._reduction = reduction
        self.mode = mode
        self._theta = theta.detach().clone()
        self.dim, self.device, self.dtype = self._theta.numel(), self._theta.device, self._theta.dtype
        self._point = self._theta.detach().requires_grad_(True)  # the leaf every kept graph differentiates by
        self._buffers = tuple((buffers or {}).values())
        self._buffer_versions = self._versions()
        self._gradients: list[torch.Tensor | None] = []
        self.graph_bytes = 0
        largest_graph = 0
        full = mode != "double_backprop" or budget_bytes <= 0
        for xb, yb in self._reduction.batches():
            gradient = None
            if not full:
                gradient, size = self._gradient_with_graph(xb, yb)
                largest_graph = max(largest_graph, size)
                if self.graph_bytes + size <= budget_bytes:
                    self.graph_bytes += size
                else:  # too large to keep: this batch, and the later ones (no larger), are recomputed per product
                    gradient, full = None, True
            self._gradients.append(gradient)
        if largest_graph == 0:  # nothing built yet (forward-over-reverse, or no budget): size the first batch's
            largest_graph = self._gradient_with_graph(*self._reduction.batches()[0])[1]
        # A block's working memory is about one batch graph per vector: as many vectors as fit what the kept graphs
        # leave of the budget (at least one, so a zero budget multiplies vector by vector), or ``block_bytes`` when
        # given (an automatic budget: then the split, and so a block's rounding, does not depend on the memory free
        # at the time, and a batch without a kept graph gets one for the block and drops it after).
        room = budget_bytes - self.graph_bytes if block_bytes is None else block_bytes
        block_size = max(1, int(room // max(largest_graph, 1))) if math.isfinite(room) else sys.maxsize
        # data parallel (Algorithm 4): every rank of the group must split a block the same way, one Allreduce per
        # sub-block; the smallest size keeps the invariant above (a rank with an unkept batch makes it 1)
        self.block_size = self._reduction.agree_min(block_size)

    def _versions(self) -> tuple[int, ...]:
        return tuple(buffer._version for buffer in self._buffers)

    @property
    def kept_batches(self) -> int:
        return sum(g is not None for g in self._gradients)

    def _gradient_with_graph(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The batch's loss gradient with its graph (``create_graph``), and the bytes that graph holds: the
        storages of every tensor it saves for the backward pass, counted once, except the point's and the data's,
        which exist without it."""
        existing = {self._point.untyped_storage().data_ptr(), xb.untyped_storage().data_ptr()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in existing:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            (gradient,) = torch.autograd.grad(self._loss_sum(self._point, xb, yb), self._point, create_graph=True)
        saved[gradient.untyped_storage().data_ptr()] = gradient.untyped_storage().nbytes()
        return gradient, sum(saved.values())

    def _check_buffers(self) -> None:
        if self._buffer_versions and self._versions() != self._buffer_versions:
            raise RuntimeError("the objective's batch-norm statistics changed after this Hessian operator was made "
                               "(set_buffers): make a new one with hvp_operator(theta)")

    def batch_product(self, index: int, xb: torch.Tensor, yb: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``H_b(theta)`` applied to ``V``, one vector ``(n,)`` or the rows of a block ``(g, n)``, for evaluation
        batch ``index`` ``(xb, yb)``: the one hook the batch loop (:meth:`BatchReduction.mean
        <.reduction.BatchReduction.mean>`) sums. A vector goes through the batch's kept graph, or is recomputed
        (:func:`batch_hvp`); a block is one vmapped forward-mode derivative, or one batched backward pass through
        the batch's graph (``is_grads_batched``)."""
        gradient = self._gradients[index]
        if V.ndim == 1:
            if gradient is None:
                return batch_hvp(self._loss_sum, self._theta, V, xb, yb, self.mode)
            return torch.autograd.grad(gradient, self._point, grad_outputs=V, retain_graph=True)[0]
        if self.mode == "forward_over_reverse":
            return vmap(lambda v: batch_hvp(self._loss_sum, self._theta, v, xb, yb, self.mode))(V)
        # Double backprop with two or more vectors: through the batch's kept graph. With a fixed budget every batch
        # kept its graph (one that did not fit left less room than one graph, which makes block_size 1); with
        # block_bytes a batch may not have: its graph is made for this block (the same bits) and dropped.
        if gradient is None:
            gradient = self._gradient_with_graph(xb, yb)[0]
        return torch.autograd.grad(gradient, self._point, grad_outputs=V, retain_graph=True, is_grads_batched=True)[0]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self._check_buffers()
        v = as_flat_vector(v, self.dim, self.device, self.dtype)
        return self._reduction.mean(self._theta, lambda index, xb, yb: self.batch_product(index, xb, yb, v))

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H(theta)`` applied to every row of ``V`` (g, n): (g, n), in sub-blocks of at most :attr:`block_size`
        rows, each one batched pass per evaluation batch. Equal to row-by-row products to float tolerance (a batched
        kernel may sum in another order), and the same bits for the same ``V`` and budget."""
        self._check_buffers()
        if V.ndim != 2 or V.shape[1] != self.dim:
            raise ValueError(f"matmat takes a (g, {self.dim}) block of row vectors, got {tuple(V.shape)}")
        V = V.to(device=self.device, dtype=self.dtype)
        blocks = [self._block_product(V[s:s + self.block_size]) for s in range(0, V.shape[0], self.block_size)]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def _block_product(self, V: torch.Tensor) -> torch.Tensor:
        if V.shape[0] == 1:
            return self(V[0]).unsqueeze(0)
        return self._reduction.mean(V, lambda index, xb, yb: self.batch_product(index, xb, yb, V))
