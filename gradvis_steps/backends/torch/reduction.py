"""The evaluation set in batches, and the one reduction over them: sums over samples divided by the sample count.

Every mean the PyTorch backend takes (the loss and accuracy of a point, the gradient, every Hessian-vector
product, the kept-graph operator's included) is a sum of per-batch sums divided by the number of samples, so each
batch counts by its size (an uneven last batch exactly as much as it should). :class:`BatchReduction` holds the
batches and takes that mean in one place, so the kept-graph products of :mod:`.point_hvp` and :meth:`hvp
<.objective.TorchObjective.hvp>` sum in the same order and agree to the bit.

Data-parallel MPI (paper Algorithm 4: each rank of a group holding a shard of whole evaluation batches) plugs in
here: :meth:`BatchReduction.combine` is the one point where the totals of a rank's batches meet those of the other
ranks, an ``Allreduce(SUM)`` over the group, and ``n_samples`` is the whole evaluation set's size; every mean (the
gradient, every Hessian-vector product, one vector or a block) and every loss/accuracy sum goes through it. A shard
holds exactly the batches a serial run makes (:func:`~gradvis_steps.core.parallel.shard_bounds`), so a data-parallel
result differs from the serial one only in the order the batch sums are added: float tolerance, not bits.

The Allreduce works on the device buffer itself where it can: a CPU tensor is handed to MPI through DLPack (no copy,
no float64 round trip). A CUDA tensor goes to MPI directly only when ``GRADVIS_MPI_CUDA_AWARE=1`` says the MPI
library takes device pointers (a CUDA-aware build: Open MPI or MPICH with UCX/CUDA); otherwise it is staged through a
host tensor of the same dtype: per product one device-to-host and one host-to-device copy of the result (n values,
4 bytes each in float32) and a stream synchronization, about 2 x n x 4 bytes / PCIe bandwidth plus ~20 us.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ...core.objective import Evaluation

if TYPE_CHECKING:
    from ...core.parallel import MPIComm, SerialComm

#: ``per_batch(index, x_b, y_b)``: one batch's sum over its samples (a tensor shaped like the result)
PerBatch = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def cuda_aware_mpi() -> bool:
    """Whether the user declared the MPI library CUDA-aware (``GRADVIS_MPI_CUDA_AWARE=1``): mpi4py cannot ask."""
    return os.environ.get("GRADVIS_MPI_CUDA_AWARE", "0") == "1"


class BatchReduction:
    """Batches of ``(x, y)`` of at most ``batch_size`` samples, and means over all samples.

    ``x`` and ``y`` are already on the device, in the dtype the objective computes in; the batches are views of
    them, made once (hot loops only iterate). ``n_samples`` is the number of samples every mean divides by: by
    default ``len(x)``; in a data-parallel group (``comm`` of several ranks) ``x`` and ``y`` are this rank's shard
    and ``n_samples`` the whole set's size (the sum of the shards)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, n_samples: int | None = None,
                 comm: SerialComm | MPIComm | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as inputs (and at least one): got {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.n_samples = len(x) if n_samples is None else int(n_samples)
        if self.n_samples < len(x):
            raise ValueError(f"n_samples {self.n_samples} is less than this shard's {len(x)} samples")
        #: the data-parallel group whose shards are summed (None or one rank: this shard is the whole set)
        self.comm = comm if comm is not None and comm.size > 1 else None
        if self.comm is None and self.n_samples != len(x):
            raise ValueError(f"a single shard must hold all {self.n_samples} samples, got {len(x)}")
        self._batches = [(x[s:s + self.batch_size], y[s:s + self.batch_size])
                         for s in range(0, len(x), self.batch_size)]

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(x_b, y_b)`` batches in order (views of ``x`` and ``y``; the last one may be shorter)."""
        return self._batches

    def combine(self, total: torch.Tensor) -> torch.Tensor:
        """Sum ``total`` over the shards of the evaluation set (Algorithm 4's Allreduce of the partial sums). One
        shard (serial): ``total`` itself; otherwise the sum over the group's ranks, identical on every rank."""
        if self.comm is None:
            return total
        total = total.contiguous()
        if total.device.type == "cpu" or cuda_aware_mpi():
            if total.device.type == "cuda":
                torch.cuda.current_stream(total.device).synchronize()  # MPI reads the buffer outside the stream
            self.comm.allreduce_sum_inplace(total)
            return total
        host = total.cpu()  # no CUDA-aware MPI: stage through the host in the same dtype (synchronizes)
        self.comm.allreduce_sum_inplace(host)
        return host.to(total.device, non_blocking=True)

    def agree_min(self, value: int) -> int:
        """The smallest ``value`` over the group's ranks: settings that decide how many collectives a product makes
        (a block split) must be the same on every rank."""
        return value if self.comm is None else self.comm.allreduce_min(value)

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
