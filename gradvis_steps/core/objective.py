"""The interface every framework backend implements for the core algorithms.

An :class:`Objective` is "a network's loss over a fixed evaluation set, as a function of a flat
parameter vector". Vectors are the backend's own arrays (torch tensors on the model's device for the
PyTorch backend) so that hot loops never move data to the host; ``to_numpy``/``from_numpy`` convert at
the edges (reading checkpoints, writing results). :meth:`Objective.hvp_operator` gives a
:class:`HessianOperator`, the operator Lanczos and SLQ multiply by.

Evaluating many points of a line or plane in one call is an optional capability
(:class:`BatchedEvaluation`); :func:`batched_evaluation` is the one place that asks an objective for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .layout import ParameterLayout

Array = Any  # the backend's array type (e.g. torch.Tensor)

#: Default memory (MiB, or "auto": :func:`~.memory.budget_bytes`) a backend may keep between the Hessian-vector
#: products at one point (:meth:`Objective.hvp_operator`): the gradient graphs of the evaluation batches.
HVP_MEMORY_MB: float | str = "auto"


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of the model at one parameter point over the evaluation set."""

    loss: float
    accuracy: float


@runtime_checkable
class HessianOperator(Protocol):
    """``v -> H(theta) v`` at one point ``theta``, as :meth:`Objective.hvp_operator` makes it.

    ``matmat(V)`` multiplies every row of a ``(g, dim)`` block (the product lockstep SLQ takes per Lanczos
    step); ``block_size`` is how many rows it multiplies in one batched pass (1: row by row)."""

    block_size: int

    def __call__(self, v: Array) -> Array:
        """``H(theta) @ v``: the same values as :meth:`Objective.hvp` at the operator's point."""

    def matmat(self, V: Array) -> Array:
        """``H(theta)`` applied to every row of ``V`` (g, dim): (g, dim)."""


@runtime_checkable
class Objective(Protocol):
    """Loss over an evaluation dataset as a function of flat parameters ``theta`` (length ``dim``).

    All reductions are exact means over the samples of the evaluation set: each batch is weighted
    by its size over the total, so the result does not depend on the batch size.
    """

    layout: ParameterLayout
    #: how Hessian-vector products are taken (backend-specific names); ``"auto"`` until :meth:`calibrate_hvp`
    #: resolves it. Every MPI rank sets the same mode so that their products agree.
    hvp_mode: str

    @property
    def dim(self) -> int: ...

    @property
    def device_type(self) -> str:
        """The kind of device the arrays live on (``"cpu"``, ``"cuda"``, ...): picks defaults such as SLQ
        group sizes."""

    def from_numpy(self, x: np.ndarray) -> Array:
        """Copy a host array to the backend (device, dtype of the objective)."""

    def to_numpy(self, x: Array) -> np.ndarray:
        """Copy a backend array to the host."""

    def initial_point(self) -> Array:
        """The flat parameters the model was built with."""

    def set_buffers(self, flat: np.ndarray, layout: list[dict] | str) -> None:
        """Use a checkpoint's buffers (``flat``, described by the trajectory's buffer ``layout``; e.g. batch-norm
        running statistics) for all later evaluations and products."""

    def evaluate(self, theta: Array) -> Evaluation:
        """Mean loss and accuracy at ``theta``, in eval mode, without touching the user's model."""

    def loss(self, theta: Array) -> float:
        """Mean loss at ``theta``."""

    def grad(self, theta: Array) -> Array:
        """Gradient of the mean loss at ``theta``."""

    def hvp(self, theta: Array, v: Array) -> Array:
        """Exact Hessian-vector product ``H(theta) @ v`` of the mean loss."""

    def hvp_operator(self, theta: Array, params: Sequence[str] | None = None) -> HessianOperator:
        """``v -> H(theta) @ v`` for many products at one point (Lanczos, SLQ), the same values as :meth:`hvp`;
        it may keep work that does not depend on ``v`` between products. ``params`` (names of :attr:`layout`): the
        principal submatrix ``H[S, S]`` of those parameters' entries ``S`` instead (layout order; the operator's
        ``dim`` is their size), differentiating only them (:func:`~.layout.parameter_indices`)."""

    def calibrate_hvp(self, theta: Array, block: int = 1) -> dict:
        """Resolve ``hvp_mode="auto"`` at ``theta`` for blocks of ``block`` vectors and return the choice as a
        record for provenance (``{"mode": ..., "chosen_by": ...}``); a fixed mode is returned as configured."""


@runtime_checkable
class BatchedEvaluation(Protocol):
    """Optional capability of an :class:`Objective`: many points of a line or plane in one call.

    An objective that has it may also keep a ``grid_batching`` record (how the points were evaluated), which
    :func:`batching_record` returns for provenance."""

    def evaluate_many(self, center: Array, directions: list[Array], coeffs: np.ndarray) -> list[Evaluation]:
        """Loss and accuracy at ``center + sum_k coeffs[p, k] * directions[k]`` for every row ``p`` of
        ``coeffs`` ``(points, len(directions))``, in row order."""


EvaluateMany = Callable[[Array, list[Array], np.ndarray], list[Evaluation]]


def batched_evaluation(objective: Objective) -> EvaluateMany | None:
    """The objective's ``evaluate_many`` when it has the :class:`BatchedEvaluation` capability, else None (the
    caller then evaluates point by point). The one place the capability is looked up."""
    return objective.evaluate_many if isinstance(objective, BatchedEvaluation) else None


def batching_record(objective: Objective) -> dict | None:
    """How the objective's batched evaluation ran (its ``grid_batching`` record), for provenance; None for an
    objective without the capability or without a record."""
    if batched_evaluation(objective) is None:
        return None
    return getattr(objective, "grid_batching", None)
