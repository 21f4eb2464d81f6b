"""The interface every framework backend implements for the core algorithms.

An :class:`Objective` is "a network's loss over a fixed evaluation set, as a function of a flat
parameter vector". Vectors are the backend's own arrays (torch tensors on the model's device for the
PyTorch backend) so that hot loops never move data to the host; ``to_numpy``/``from_numpy`` convert at
the edges (reading checkpoints, writing results).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .layout import ParameterLayout

Array = Any  # the backend's array type (e.g. torch.Tensor)

#: Default memory (MiB) a backend may keep between the Hessian-vector products at one point
#: (:meth:`Objective.hvp_operator`): the gradient graphs of the evaluation batches.
HVP_MEMORY_MB = 512.0


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of the model at one parameter point over the evaluation set."""

    loss: float
    accuracy: float


@runtime_checkable
class Objective(Protocol):
    """Loss over an evaluation dataset as a function of flat parameters ``theta`` (length ``dim``).

    All reductions are exact means over the samples of the evaluation set: each batch is weighted
    by its size over the total, so the result does not depend on the batch size.
    """

    layout: ParameterLayout

    @property
    def dim(self) -> int: ...

    def from_numpy(self, x: np.ndarray) -> Array:
        """Copy a host array to the backend (device, dtype of the objective)."""

    def to_numpy(self, x: Array) -> np.ndarray:
        """Copy a backend array to the host."""

    def evaluate(self, theta: Array) -> Evaluation:
        """Mean loss and accuracy at ``theta``, in eval mode, without touching the user's model."""

    def loss(self, theta: Array) -> float:
        """Mean loss at ``theta``."""

    def grad(self, theta: Array) -> Array:
        """Gradient of the mean loss at ``theta``."""

    def hvp(self, theta: Array, v: Array) -> Array:
        """Exact Hessian-vector product ``H(theta) @ v`` of the mean loss."""

    def hvp_operator(self, theta: Array) -> Callable[[Array], Array]:
        """``v -> H(theta) @ v`` for many products at one point (Lanczos, SLQ), the same values as :meth:`hvp`;
        it may keep work that does not depend on ``v`` between products."""
