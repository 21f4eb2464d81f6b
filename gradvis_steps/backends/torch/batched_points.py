"""Many landscape points in one vectorized forward pass (``torch.func.vmap`` over stacked parameter sets).

:meth:`TorchObjective.evaluate_many <.objective.TorchObjective.evaluate_many>` evaluates loss and accuracy at
``center + sum_k c[p, k] d_k`` for the rows ``p`` of a coefficient chunk. The per-point path (the objective's
:meth:`~.objective.TorchObjective.evaluate_per_point`) loads each point into the module and runs it once per point;
:class:`BatchedPoints` instead forms all ``P`` points of a chunk as one ``(P, n)`` tensor (``center + C @ D``),
views it per layer as a ``(P, *shape)`` parameter dict and runs ``vmap(functional_call)`` over it, one call per
data batch (buffers, e.g. batch-norm running statistics, shared by all points; eval mode). Where
:class:`~.plane.PlaneShortcut` serves the input layers, their ``(P, ...)`` outputs come from its pieces in one
matrix product instead. On a GPU this replaces ``P`` small launch-bound
forward passes by one; on a CPU the batched convolutions (grouped, with layout copies) are often slower than the
plain ones, so a :class:`GridEvaluator` decides:

* ``"per_point"``: the existing path, always;
* ``"vmap"``: always the vectorized path, in chunks of :meth:`BatchedPoints.points_per_call` points;
* ``"auto"`` (default): on a CPU the per-point path (measured faster there, and the same bits run after run); on
  other devices, at the first call with at least two points, a short calibration (a warm-up of each path,
  then up to :data:`CALIBRATION_ROUNDS` alternating timings on that call's own points) picks the faster path; the
  vectorized one only when every round agrees and it is at least ``1 / CALIBRATION_MARGIN`` times faster, so a
  calibration too noisy to trust keeps the per-point path. The choice is kept as :attr:`GridEvaluator.choice`
  (a dict for provenance, the objective's ``grid_batching``) and reused by later calls.

Chunking to memory: one probe forward pass of a single point over the largest data batch measures the peak of
the live tensors it allocates (:func:`forward_peak_bytes`); a vectorized point costs about
:data:`VMAP_MEMORY_FACTOR` times that (the batching rules move the point axis and copy) plus its parameters, and
:data:`MEMORY_BUDGET_MB` (per device type, or :attr:`GridEvaluator.memory_mb`) bounds the points per call.

The evaluator is given what it needs (the per-point evaluator, the vectorized one, the plane shortcut, the reduction
of sums to means) as callables and objects; it never reaches into the objective.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ...core.layout import ParameterLayout
from ...core.objective import Evaluation
from .losses import TorchLoss
from .plane import PlaneShortcut

GRID_BATCHING_MODES = ("auto", "vmap", "per_point")
#: memory the activations of one vectorized call may take, per device type (MiB); others use the "cpu" value
MEMORY_BUDGET_MB = {"cpu": 256.0, "cuda": 2048.0}
#: a vectorized point's live memory relative to a plain forward pass's peak (batching rules' layout copies)
VMAP_MEMORY_FACTOR = 2.0
#: timed rounds of the calibration (each: the per-point path on a few points, the vectorized one on a chunk)
CALIBRATION_ROUNDS = 3
#: points the per-point path is timed on per round (the vectorized path is timed on a whole chunk)
CALIBRATION_POINTS = 4
#: calibrate "auto" on CPUs too (tests do; by default a CPU keeps the per-point path without timing)
CALIBRATE_ON_CPU = False
#: the vectorized path is chosen only if its median time per point is below this fraction of the per-point one
CALIBRATION_MARGIN = 0.9

clock: Callable[[], float] = time.perf_counter  # module attribute: tests replace it


def check_grid_batching(mode: object) -> str:
    """``mode`` if it is one of :data:`GRID_BATCHING_MODES`, else a ValueError naming it and the accepted ones."""
    if not isinstance(mode, str) or mode not in GRID_BATCHING_MODES:
        raise ValueError(f"grid_batching {mode!r} is not one of {', '.join(map(repr, GRID_BATCHING_MODES))}")
    return mode


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages that the ops run under this mode allocate and that are still referenced."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage address -> [tensors referencing it, its bytes]
        self._known: set[int] = set()  # storages that existed before (inputs, parameters): not counted

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's signature
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, torch.Tensor):
                key = value.untyped_storage().data_ptr()
                if key not in self._refs:
                    self._known.add(key)
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if not isinstance(value, torch.Tensor):
                continue
            storage = value.untyped_storage()
            key = storage.data_ptr()
            if key in self._known and key not in self._refs:
                continue  # an in-place op or a view of something that was there before
            entry = self._refs.setdefault(key, [0, storage.nbytes()])
            if entry[0] == 0:
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(value, self._release, key)
        return out


def forward_peak_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of the tensors one ``module(x)`` forward pass allocates and holds at once (inference mode)."""
    tracker = _LiveBytes()
    with torch.inference_mode(), tracker:
        module(x)
    return max(tracker.peak, 1)


class BatchedPoints:
    """Loss sums and correct counts of many points ``center + C @ D`` by ``vmap`` over stacked parameter sets.

    ``batches`` are the evaluation set's ``(x, y)`` batches; ``buffers`` the module's buffers (shared by all
    points); ``criterion`` the run's loss (default cross-entropy). The module must be in eval mode (batch
    statistics would mix the points)."""

    def __init__(self, module: nn.Module, layout: ParameterLayout, buffers: dict[str, torch.Tensor],
                 batches: Sequence[tuple[torch.Tensor, torch.Tensor]], criterion: TorchLoss | None = None):
        if module.training:
            raise ValueError("BatchedPoints needs a module in eval mode")
        self.module, self.layout, self.buffers = module, layout, buffers
        self.batches = list(batches)
        self.criterion = criterion if criterion is not None else TorchLoss()
        self._bytes_per_point: int | None = None
        self._outputs: dict[int, torch.Tensor] = {}  # input layer index -> its (batched) output, during a call
        self._vmapped = vmap(self._forward, in_dims=(0, 0, None))

    # -- memory -------------------------------------------------------------------------------------
    def bytes_per_point(self) -> int:
        """Memory of one point in a vectorized call: :data:`VMAP_MEMORY_FACTOR` times one plain forward pass's
        peak over the largest batch (measured once), plus the point's parameters."""
        if self._bytes_per_point is None:
            largest = max((xb for xb, _ in self.batches), key=len)
            peak = forward_peak_bytes(self.module, largest)
            itemsize = largest.element_size()
            self._bytes_per_point = int(VMAP_MEMORY_FACTOR * peak) + self.layout.size * itemsize
        return self._bytes_per_point

    def points_per_call(self, n_points: int, budget_bytes: float) -> int:
        """Points per vectorized call: as many as ``budget_bytes`` holds, at least 1, at most ``n_points``."""
        return max(1, min(int(n_points), int(budget_bytes // self.bytes_per_point())))

    # -- evaluation ---------------------------------------------------------------------------------
    def _forward(self, params: dict[str, torch.Tensor], outputs: tuple[torch.Tensor, ...],
                 xb: torch.Tensor) -> torch.Tensor:
        """One point's logits (vmapped over ``params`` and the input layers' ``outputs``)."""
        self._outputs = dict(enumerate(outputs))
        try:
            return functional_call(self.module, (params, self.buffers), (xb,))
        finally:
            self._outputs = {}

    def _installed(self, plane: PlaneShortcut | None, xb: torch.Tensor) -> list[nn.Module]:
        """Route the plane's input layers to the precomputed outputs while ``_forward`` runs on ``xb``."""
        if plane is None:
            return []
        layers = [layer.layer for layer in plane.layers]
        for index, layer in enumerate(layers):
            original = type(layer).forward

            def forward(x: torch.Tensor, index: int = index, layer: nn.Module = layer,
                        original: Callable = original) -> torch.Tensor:
                if x is xb and index in self._outputs:
                    return self._outputs[index]
                return original(layer, x)

            layer.forward = forward
        return layers

    def evaluate(self, center: torch.Tensor, directions: Sequence[torch.Tensor], coefficients: torch.Tensor,
                 plane: PlaneShortcut | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss sums (float64) and correct counts of the ``P`` points ``center + coefficients @ directions``
        (``coefficients``: ``(P, K)`` in the parameters' dtype and device), all in one forward pass per batch.
        ``plane``: a :class:`PlaneShortcut` prepared for these center and directions, or None."""
        count = coefficients.shape[0]
        with torch.inference_mode():
            if directions:
                thetas = torch.addmm(center.unsqueeze(0), coefficients, torch.stack(list(directions)))
            else:
                thetas = center.unsqueeze(0).repeat(count, 1)
            params = {spec.name: thetas[:, spec.slice].view(count, *spec.shape) for spec in self.layout}
            losses = torch.zeros(count, device=center.device, dtype=torch.float64)
            corrects = torch.zeros(count, device=center.device,
                                   dtype=torch.long if self.criterion.name == "cross_entropy" else torch.float64)
            for b, (xb, yb) in enumerate(self.batches):
                outputs = tuple(plane.batch_outputs(b, coefficients)) if plane is not None else ()
                layers = self._installed(plane, xb)
                try:
                    logits = self._vmapped(params, outputs, xb)  # (P, batch, classes)
                finally:
                    for layer in layers:
                        del layer.forward
                losses += self.criterion.sums(logits, yb)
                corrects += self.criterion.correct(logits, yb)
        return losses, corrects


# ------------------------------------------------------------------------------------------- the choice
#: ``per_point(center, directions, coefficients)``: the points' loss and accuracy, one forward pass per point
PerPoint = Callable[[torch.Tensor, list[torch.Tensor], np.ndarray], list[Evaluation]]
#: ``plane_for(center, directions)``: the input-layer shortcut prepared for this plane, or None
PlaneFor = Callable[[torch.Tensor, list[torch.Tensor]], PlaneShortcut | None]
#: ``evaluations(sums)``: mean loss and accuracy of points from their ``(points, 2)`` sums over samples
Evaluations = Callable[[torch.Tensor], list[Evaluation]]


def _seconds_per_point(run: Callable[[], Any], points: int) -> tuple[float, Any]:
    start = clock()
    value = run()
    return (clock() - start) / points, value


class GridEvaluator:
    """Many landscape points by the per-point path or the vectorized one, as :attr:`mode` says (see the module
    docstring); the path taken, and why, is kept in :attr:`choice`.

    ``per_point`` evaluates points one forward pass each; ``batched`` is the vectorized path; ``plane_for`` gives
    the input-layer shortcut of a plane (or None); ``evaluations`` turns sums over samples into means; ``device``
    and ``dtype`` are the objective's (a chunk's coefficient table is made there)."""

    def __init__(self, per_point: PerPoint, batched: BatchedPoints, plane_for: PlaneFor, evaluations: Evaluations,
                 device: torch.device, dtype: torch.dtype, mode: str = "auto"):
        self.per_point, self.batched, self.plane_for, self.evaluations = per_point, batched, plane_for, evaluations
        self.device, self.dtype = device, dtype
        #: the path asked for: "auto" | "vmap" | "per_point" (checked again at every call: it may be changed)
        self.mode = check_grid_batching(mode)
        #: the choice made (None: not yet), for provenance
        self.choice: dict[str, Any] | None = None
        #: the memory budget of a vectorized call in MiB (None: :data:`MEMORY_BUDGET_MB` of the device type)
        self.memory_mb: float | None = None

    def budget_bytes(self) -> float:
        """The memory one vectorized call may take."""
        mb = self.memory_mb
        if mb is None:
            mb = MEMORY_BUDGET_MB.get(self.device.type, MEMORY_BUDGET_MB["cpu"])
        return float(mb) * 2**20

    def _vmapped(self, center: torch.Tensor, dirs: list[torch.Tensor], coeffs: np.ndarray,
                 per_call: int) -> list[Evaluation]:
        """The points of ``coeffs`` in vectorized calls of at most ``per_call`` points, one host sync at the end."""
        plane = self.plane_for(center, dirs)
        table = torch.as_tensor(coeffs).to(device=self.device, dtype=self.dtype)
        parts = []
        for start in range(0, len(coeffs), per_call):
            losses, corrects = self.batched.evaluate(center, dirs, table[start:start + per_call], plane)
            parts.append(torch.stack([losses, corrects.to(torch.float64)], dim=1))
        return self.evaluations(torch.cat(parts))

    def calibrate(self, center: torch.Tensor, dirs: list[torch.Tensor], coeffs: np.ndarray,
                  per_call: int) -> tuple[dict[str, Any], list[Evaluation]]:
        """Time the per-point and the vectorized path on the points of ``coeffs`` (at least 2; the vectorized path
        on the first ``per_call`` of them, the per-point one on :data:`CALIBRATION_POINTS`), after a warm-up of each.

        Returns the choice (``mode``, the medians in ``seconds_per_point``, every round's times, ``reason``) and the
        vectorized path's results for the first ``per_call`` points (valid whatever the choice)."""
        chunk = coeffs[:per_call]
        few = coeffs[:min(CALIBRATION_POINTS, len(chunk))]
        times: dict[str, list[float]] = {"per_point": [], "vmap": []}
        self.per_point(center, dirs, few[:1])  # warm-ups
        try:
            results = self._vmapped(center, dirs, chunk, per_call)
        except Exception as error:  # noqa: BLE001 - no batching rule for some op, ...: the per-point path works
            return {"mode": "per_point", "seconds_per_point": {}, "rounds": times,
                    "reason": f"the vectorized forward pass failed: {type(error).__name__}: {error}"}, []
        reason = ""
        for round_ in range(CALIBRATION_ROUNDS):
            per_point = lambda: self.per_point(center, dirs, few)  # noqa: E731
            vectorized = lambda: self._vmapped(center, dirs, chunk, per_call)  # noqa: E731
            order = [("per_point", per_point, len(few)), ("vmap", vectorized, len(chunk))]
            for name, run, points in order if round_ % 2 == 0 else order[::-1]:
                seconds, value = _seconds_per_point(run, points)
                times[name].append(seconds)
                if name == "vmap":
                    results = value
            if times["vmap"][-1] >= times["per_point"][-1]:
                reason = f"the vectorized path was not faster in round {round_ + 1}"
                break
        medians = {name: statistics.median(values) for name, values in times.items()}
        if not reason:
            if max(times["vmap"]) >= min(times["per_point"]):
                reason = "too noisy to trust: the rounds' times overlap"
            elif medians["vmap"] > CALIBRATION_MARGIN * medians["per_point"]:
                reason = f"the vectorized path was less than {1 / CALIBRATION_MARGIN:.3g}x faster"
        mode = "per_point" if reason else "vmap"
        return {"mode": mode, "seconds_per_point": medians, "rounds": times,
                "reason": reason or "the vectorized path was faster in every round"}, results

    def __call__(self, center: torch.Tensor, dirs: list[torch.Tensor], coeffs: np.ndarray) -> list[Evaluation]:
        """Loss and accuracy at ``center + coeffs[p] @ dirs`` for every row ``p``, by the path :attr:`mode` names;
        records the path taken, and why, in :attr:`choice`."""
        requested = check_grid_batching(self.mode)
        choice = self.choice
        if choice is not None and choice["requested"] != requested:
            choice = None  # the override changed since the choice was made
        if requested == "auto" and choice is None and self.device.type == "cpu" and not CALIBRATE_ON_CPU:
            # On CPUs the batched convolutions measured slower than plain ones (bench/README.md, grid_batched.py), and
            # a timed choice would make two runs of one config differ in the last bits: keep the per-point path.
            self.choice = {"requested": requested, "mode": "per_point", "points_per_call": 1,
                           "seconds_per_point": {}, "reason": "auto on a CPU: per-point (vmap is slower there)"}
            choice = self.choice
        if choice is not None and choice["mode"] == "per_point" and choice["points_per_call"] == 1:
            return self.per_point(center, dirs, coeffs)
        if requested == "per_point" or (requested == "auto" and choice is None and len(coeffs) < 2):
            if choice is None and requested == "per_point":
                self.choice = {"requested": requested, "mode": "per_point", "points_per_call": 1,
                               "seconds_per_point": {}, "reason": "requested"}
            return self.per_point(center, dirs, coeffs)
        budget = self.budget_bytes()
        per_call = self.batched.points_per_call(len(coeffs), budget)
        head: list[Evaluation] = []
        if choice is None:
            choice = {"requested": requested, "mode": requested, "points_per_call": per_call,
                      "bytes_per_point": self.batched.bytes_per_point(), "memory_budget_mb": budget / 2**20,
                      "seconds_per_point": {}, "reason": "requested"}
            if requested == "auto":
                if per_call < 2:
                    choice.update(mode="per_point", reason="one point per vectorized call fits the memory budget")
                else:
                    found, head = self.calibrate(center, dirs, coeffs, per_call)
                    choice.update(found)
            self.choice = choice
        rest = coeffs[len(head):]
        if not len(rest):
            return head
        if choice["mode"] == "per_point":
            return head + self.per_point(center, dirs, rest)
        return head + self._vmapped(center, dirs, rest, per_call)
