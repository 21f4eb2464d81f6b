"""A run's loss in PyTorch: per-sample losses, their sums over points and samples, and correct predictions.

The spec (:mod:`gradvis_steps.losses`) says which loss; :class:`TorchLoss` computes it on outputs shaped
``(n, d)`` or, for many landscape points at once, ``(P, n, d)``. Cross-entropy keeps the kernels it always used
(``F.cross_entropy`` for one batch, ``logsumexp - gather`` for many points), so its results are bitwise those of
earlier versions; the other losses sum per-sample values.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ...losses import LossSpec


class TorchLoss(LossSpec):
    """The loss a spec names, as torch functions of outputs ``z`` and targets ``y`` (made by :meth:`targets`)."""

    def targets(self, y: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The targets as this loss takes them: class indices (int64) for cross-entropy; ``(n, d)`` floats in the
        objective's dtype for mse and bce_with_logits; for a custom loss integer targets as int64 and float ones in
        the objective's dtype, shaped as the dataset gives them."""
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        if self.name == "cross_entropy":
            return y.to(device=device, dtype=torch.long)
        integer = not (y.is_floating_point() or y.is_complex())
        if self.name == "custom" and integer:
            return y.to(device=device, dtype=torch.long)
        y = y.to(device=device, dtype=dtype)
        return y.reshape(len(y), -1) if self.name in ("mse", "bce_with_logits") else y

    def per_sample(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses of outputs ``z`` (``(n, d)`` or ``(P, n, d)``): ``(n,)`` or ``(P, n)``."""
        if self.name == "cross_entropy":
            if z.ndim == 2:
                return F.cross_entropy(z, y, reduction="none")
            target = y.view(1, -1, 1).expand(z.shape[0], -1, 1)
            return torch.logsumexp(z, dim=2) - z.gather(2, target).squeeze(2)
        if self.name == "mse":
            return (z - y).square().mean(dim=-1)
        if self.name == "bce_with_logits":
            return F.binary_cross_entropy_with_logits(z, y.expand_as(z), reduction="none").mean(dim=-1)
        if z.ndim == 3:
            return torch.stack([self._call_custom(zp, y) for zp in z])
        return self._call_custom(z, y)

    def _call_custom(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self.custom(z, y)
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (len(z),):
            shape = tuple(losses.shape) if hasattr(losses, "shape") else type(losses).__name__
            raise ValueError(f"loss {self.spec['entry_point']!r} returned {shape} for {len(z)} samples; expected "
                             f"the per-sample losses, a tensor of shape ({len(z)},)")
        return losses

    def sum(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss summed over the samples of one batch (``z``: ``(n, d)``; differentiable)."""
        if self.name == "cross_entropy":
            return F.cross_entropy(z, y, reduction="sum")
        return self.per_sample(z, y).sum()

    def mean(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss over the samples of one batch (training)."""
        if self.name == "cross_entropy":
            return F.cross_entropy(z, y)
        return self.per_sample(z, y).mean()

    def sums(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss sums (float64) of the ``P`` points of ``(P, n, d)`` outputs: ``(P,)``."""
        return self.per_sample(z, y).sum(dim=1, dtype=torch.float64)

    def correct(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Correct predictions summed over the samples (last-but-one axis of ``z``): argmax for cross-entropy, the
        share of labels with ``(z > 0) == y`` per sample for bce_with_logits, NaN where accuracy means nothing."""
        if self.name == "cross_entropy":
            return (z.argmax(dim=-1) == y).sum(dim=-1)
        if self.name == "bce_with_logits":
            return ((z > 0) == (y > 0.5)).to(torch.float64).mean(dim=-1).sum(dim=-1)
        return torch.full(z.shape[:-2], math.nan, dtype=torch.float64, device=z.device)


__all__ = ["TorchLoss"]
