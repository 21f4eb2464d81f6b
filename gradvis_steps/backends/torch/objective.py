"""The PyTorch Objective: loss, accuracy, gradient and exact Hessian-vector products at a flat vector.

The user's model is never mutated: the objective keeps its own eval-mode copy and evaluates it with
``torch.func.functional_call`` on views of the flat vector. Every reduction is a sum over samples
divided by the number of samples, so each batch is weighted by its size (an uneven last batch counts
exactly as much as it should; the original GradVis multiplied HVPs by the number of batches instead).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from ...core.objective import Evaluation
from .flat import flatten_parameters, layout_of, unflatten, unflatten_buffers

HVP_MODES = ("forward_over_reverse", "double_backprop")


class TorchObjective:
    """Mean cross-entropy of ``model`` over ``(x, y)`` as a function of its flat trainable parameters."""

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
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if hvp_mode not in HVP_MODES:
            raise ValueError(f"hvp_mode {hvp_mode!r} is not one of {HVP_MODES}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as inputs (and at least one): got {len(x)} and {len(y)}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        self.hvp_mode = hvp_mode
        self.batch_size = int(batch_size)
        self.module = copy.deepcopy(model).to(device=self.device, dtype=dtype).eval()
        for p in self.module.parameters():  # the copy's own parameters are never used for gradients
            p.requires_grad_(False)
        self.layout = layout_of(model)
        self.buffers = {name: b for name, b in self.module.named_buffers()}
        self.x = torch.as_tensor(x).to(device=self.device, dtype=dtype)
        self.y = torch.as_tensor(y).to(device=self.device, dtype=torch.long)
        self.n_samples = len(self.x)

    # -- conversion ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.layout.size

    def from_numpy(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x)).to(device=self.device, dtype=self.dtype)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def initial_point(self) -> torch.Tensor:
        """The flat parameters the model was built with."""
        return flatten_parameters(self.module, self.layout).to(self.dtype)

    def set_buffers(self, flat: np.ndarray, layout: list[dict] | str) -> None:
        """Use a checkpoint's buffers (batch-norm running statistics) for all later evaluations."""
        self.buffers = unflatten_buffers(flat, layout, self.device, float_dtype=self.dtype)

    # -- evaluation ---------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.n_samples, self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]

    def _logits(self, theta: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (unflatten(theta, self.layout), self.buffers), (xb,))

    def _loss_sum(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._logits(theta, xb), yb, reduction="sum")

    def evaluate(self, theta: torch.Tensor) -> Evaluation:
        """Mean loss and accuracy at ``theta``; one host sync at the end, none per batch."""
        theta = self._check(theta)
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        with torch.no_grad():
            for xb, yb in self._batches():
                logits = self._logits(theta, xb)
                loss += F.cross_entropy(logits, yb, reduction="sum").to(torch.float64)
                correct += (logits.argmax(dim=1) == yb).sum()
        values = torch.stack([loss / self.n_samples, correct.to(torch.float64) / self.n_samples]).tolist()
        return Evaluation(loss=values[0], accuracy=values[1])

    def loss(self, theta: torch.Tensor) -> float:
        return self.evaluate(theta).loss

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """Gradient of the mean loss (one backward pass per batch, accumulated on the device)."""
        theta = self._check(theta)
        total = torch.zeros_like(theta)
        for xb, yb in self._batches():
            total += grad(self._loss_sum)(theta, xb, yb)
        return total / self.n_samples

    def hvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Exact ``H(theta) @ v`` of the mean loss (Pearlmutter's R-operator, paper section 2.2)."""
        theta, v = self._check(theta), self._check(v)
        total = torch.zeros_like(theta)
        for xb, yb in self._batches():
            total += self._batch_hvp(theta, v, xb, yb)
        return total / self.n_samples

    def _batch_hvp(self, theta: torch.Tensor, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.hvp_mode == "forward_over_reverse":
            # d/de grad(L)(theta + e v) at e=0: a forward-mode derivative of the reverse-mode gradient.
            return jvp(lambda t: grad(self._loss_sum)(t, xb, yb), (theta,), (v,))[1]
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._loss_sum(t, xb, yb), t, create_graph=True)
            (hv,) = torch.autograd.grad(g, t, grad_outputs=v)
        return hv

    def _check(self, theta: torch.Tensor) -> torch.Tensor:
        if not isinstance(theta, torch.Tensor):
            theta = self.from_numpy(theta)
        if theta.shape != (self.dim,):
            raise ValueError(f"flat vector has shape {tuple(theta.shape)}, expected ({self.dim},)")
        return theta.to(device=self.device, dtype=self.dtype)
