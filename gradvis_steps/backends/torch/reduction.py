"""The evaluation set in batches, and the one reduction over them: sums over samples divided by the sample count.

Every mean the PyTorch backend takes (the loss and accuracy of a point, the gradient, every Hessian-vector
product, the kept-graph operator's included) is a sum of per-batch sums divided by the number of samples, so each
batch counts by its size (an uneven last batch exactly as much as it should). :class:`BatchReduction` holds the
batches and takes that mean in one place, so the kept-graph products of :mod:`.point_hvp` and :meth:`hvp
<.objective.TorchObjective.hvp>` sum in the same order and agree to the bit.

Data-parallel MPI (each rank holding a shard of the evaluation set) plugs in here: :meth:`BatchReduction.combine`
is the one point where the totals of a rank's batches meet those of the other ranks. Serially it returns the total
as it is; a data-parallel run makes it an ``Allreduce(SUM)`` over the ranks (and ``n_samples`` the sum of the
shards' sizes), and every mean and every loss/accuracy sum goes through it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...core.objective import Evaluation

#: ``per_batch(index, x_b, y_b)``: one batch's sum over its samples (a tensor shaped like the result)
PerBatch = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class BatchReduction:
    """Batches of ``(x, y)`` of at most ``batch_size`` samples, and means over all samples.

    ``x`` and ``y`` are already on the device, in the dtype the objective computes in; the batches are views of
    them, made once (hot loops only iterate). ``n_samples`` is the number of samples every mean divides by."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as inputs (and at least one): got {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.n_samples = len(x)
        self._batches = [(x[s:s + self.batch_size], y[s:s + self.batch_size])
                         for s in range(0, len(x), self.batch_size)]

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(x_b, y_b)`` batches in order (views of ``x`` and ``y``; the last one may be shorter)."""
        return self._batches

    def combine(self, total: torch.Tensor) -> torch.Tensor:
        """Sum ``total`` over the shards of the evaluation set. One shard (serial): ``total`` itself. A data-parallel
        run replaces this with an Allreduce(SUM) over the ranks, the only change the means below need."""
        return total

    def mean(self, like: torch.Tensor, per_batch: PerBatch) -> torch.Tensor:
        """``sum_b per_batch(b, x_b, y_b) / n_samples``, summed in batch order into a zero tensor shaped like
        ``like``: the one reduction over batches of the gradient and of every Hessian-vector product."""
        total = torch.zeros_like(like)
        for index, (xb, yb) in enumerate(self._batches):
            total += per_batch(index, xb, yb)
        return self.combine(total) / self.n_samples

    def evaluations(self, sums: torch.Tensor) -> list[Evaluation]:
        """Mean loss and accuracy of points from their sums over samples: ``sums`` is ``(points, 2)``, each row a
        loss sum and a count of correct predictions (float64). One host sync for all points."""
        n = self.n_samples
        return [Evaluation(loss=loss / n, accuracy=correct / n) for loss, correct in self.combine(sums).tolist()]
