"""What the steps use of one framework: the :class:`Backend` record a backend package fills in.

Kept apart from the registry (:mod:`gradvis_steps.backends`, which re-exports it): a backend package imports this
module, and the registry imports the backend packages (in their loaders), so neither imports the other back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.layout import ParameterLayout
    from ..core.objective import Objective


@dataclass(frozen=True)
class Backend:
    """What the steps use of one framework. ``Model`` and ``Device`` below are the framework's own types.

    - ``resolve_device(name: str | None) -> Device``: ``"auto"`` (or None) picks an accelerator when there is
      one; anything else must name a device of the framework, else a ValueError.
    - ``objective_for_trajectory(trajectory, *, fraction, subset_seed, batch_size, device, dtype, buffers_from,
      dataset, hvp_memory_mb, grid_batching, hvp_mode, data_comm) -> Objective``: the loss of a trained run's model
      over the deterministic evaluation subset of its data, as a function of flat parameters (all keywords
      optional; ``data_comm``: the data-parallel group of ranks that shard the evaluation batches, Algorithm 4).
    - ``build_model(config: dict, dataset: ArrayDataset) -> Model``: the (seeded) model a run config names.
    - ``parameter_layout(model) -> ParameterLayout`` and ``buffer_layout(model) -> list[dict]``: how the model's
      trainable parameters and its buffers (batch-norm statistics) are laid out in flat vectors.
    - ``train(model, dataset, settings: TrainSettings, writer: TrajectoryWriter, *, device, progress: bool)
      -> dict``: train on the dataset's training split with the optimizer and learning-rate schedule ``settings``
      name (the step of :func:`~..core.training.run_training`; its resume state holds the optimizer's, so a resumed
      run equals the uninterrupted one bitwise), appending checkpoints to ``writer``; returns a summary. Every
      point passes :class:`~..core.training.DivergenceGuard` before it is stored, which raises ``TrainingDiverged`` at
      the first non-finite batch loss or parameter.
    - ``load_checkpoint(path, model) -> (dict[str, ndarray], str | None)``: the arrays of a checkpoint file of the
      framework's own kind (torch: ``.pt .pth .ckpt .t7``; tensorflow: Keras ``.weights.h5``), named as the model
      names its parameters and buffers (before any wrapper prefix is stripped), in the file's dtypes, and the key the
      state dict was nested under (None: not nested); never runs code from the file; one-line ValueError for a file
      it cannot read. None: the backend reads no checkpoint files (the import step says so).
    - ``recording``: what :mod:`gradvis_steps.record` offers a user of the framework, by name (torch: ``Recorder``,
      ``describe_optimizer``; tensorflow: ``KerasRecorder``, ``BatchLoss``); empty: no recorder.
    - ``objective_for_model(model, x, y, *, loss, batch_size, device, dtype, hvp_memory_mb, hvp_mode, grid_batching)
      -> Objective``: a user's own model (never changed: the objective keeps a copy) on the user's arrays, ``x`` in
      the model's own input layout, ``dtype`` a name (``"float32"``); the Python API (:mod:`gradvis_steps.api`)
      builds on it. None: the backend takes no user models.
    - ``flat_parameters(model) -> ndarray``: the model's trainable parameters as one flat host array, in the order
      of ``parameter_layout(model)`` and in their own dtype. None: as for ``objective_for_model``.
    """

    name: str
    resolve_device: Callable[[str | None], Any]
    objective_for_trajectory: Callable[..., Objective]
    build_model: Callable[[dict[str, Any], Any], Any]
    parameter_layout: Callable[[Any], ParameterLayout]
    buffer_layout: Callable[[Any], list[dict]]
    train: Callable[..., dict[str, Any]]
    load_checkpoint: Callable[[Any, Any], tuple[dict[str, Any], str | None]] | None = None
    recording: Mapping[str, Any] = field(default_factory=dict)
    objective_for_model: Callable[..., Objective] | None = None
    flat_parameters: Callable[[Any], Any] | None = None
