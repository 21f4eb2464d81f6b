"""Hessian-vector products at one fixed point through kept gradient graphs.

Lanczos and SLQ (paper section 2.2, Algorithm 2) multiply the Hessian at one point by hundreds of vectors. A
plain HVP (Pearlmutter's R-operator by double backpropagation) runs, per batch, a forward pass, a backward pass
that builds the gradient's graph, and a backward pass through that graph. The first two do not depend on the
vector, so :class:`PointHVP` runs them once per batch and keeps the gradient with its graph: each product is then
one backward pass per batch, with bitwise the same result. Graphs take memory (the activations, and what the
first backward saves for the second), so they are kept only while their total fits a budget; the other batches
are recomputed per product, as :meth:`TorchObjective.hvp` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .objective import TorchObjective


class PointHVP:
    """``v -> H(theta) v`` of the mean loss for many ``v`` at one ``theta``: the operator the Lanczos loops call.

    ``graph_bytes`` is the memory the kept graphs take, ``kept_batches`` how many batches have theirs. The point is
    copied, so changing the caller's ``theta`` afterwards changes nothing; the kept graphs also hold the objective's
    batch-norm statistics, so a product after :meth:`TorchObjective.set_buffers` raises instead of mixing old and new.
    """

    def __init__(self, objective: TorchObjective, theta: torch.Tensor, budget_bytes: float) -> None:
        self._objective = objective
        self._theta = objective._check(theta).detach().clone()
        self._point = self._theta.detach().requires_grad_(True)  # the leaf every kept graph differentiates by
        self._buffer_versions = self._versions()
        self._gradients: list[torch.Tensor | None] = []
        self.graph_bytes = 0
        full = objective.hvp_mode != "double_backprop" or budget_bytes <= 0
        for xb, yb in objective._batches():
            gradient = None
            if not full:
                gradient, size = self._gradient_with_graph(xb, yb)
                if self.graph_bytes + size <= budget_bytes:
                    self.graph_bytes += size
                else:  # too large to keep: this batch, and the later ones (no larger), are recomputed per product
                    gradient, full = None, True
            self._gradients.append(gradient)

    def _versions(self) -> tuple[int, ...]:
        return tuple(buffer._version for buffer in self._objective.buffers.values())

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
            (gradient,) = torch.autograd.grad(self._objective._loss_sum(self._point, xb, yb), self._point,
                                              create_graph=True)
        saved[gradient.untyped_storage().data_ptr()] = gradient.untyped_storage().nbytes()
        return gradient, sum(saved.values())

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        objective = self._objective
        if self._buffer_versions and self._versions() != self._buffer_versions:
            raise RuntimeError("the objective's batch-norm statistics changed after this Hessian operator was made "
                               "(set_buffers): make a new one with hvp_operator(theta)")
        v = objective._check(v)

        def batch_product(index: int, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            gradient = self._gradients[index]
            if gradient is None:
                return objective._batch_hvp(self._theta, v, xb, yb)
            return torch.autograd.grad(gradient, self._point, grad_outputs=v, retain_graph=True)[0]

        return objective._batch_mean(self._theta, batch_product)
