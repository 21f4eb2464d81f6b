"""Framework backends: the only code that imports a deep-learning framework.

Step modules never import a backend package. They ask this registry for one: :func:`backend` by name (the train
step's ``--framework``) or :func:`backend_for_trajectory` (the ``framework`` a trajectory's run config records), and
get a :class:`Backend`, the few functions a step needs of a framework. A backend is registered with a loader, which
imports its package (and so its framework) only when the backend is first asked for::

    register_backend("tensorflow", lambda: importlib.import_module("mypackage.tf_backend").BACKEND)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.layout import ParameterLayout
    from ..core.objective import Objective
    from ..storage.trajectory import Trajectory

#: The framework of trajectories whose run config records none (written before the key existed).
DEFAULT_FRAMEWORK = "torch"


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


_loaders: dict[str, Callable[[], Backend]] = {}
_loaded: dict[str, Backend] = {}


def register_backend(name: str, loader: Callable[[], Backend]) -> None:
    """Make ``backend(name)`` call ``loader()`` (once, at the first request) for the backend. Registering a name
    again replaces the earlier loader."""
    _loaders[name] = loader
    _loaded.pop(name, None)


def known_backends() -> tuple[str, ...]:
    """The names registered, sorted (nothing is imported)."""
    return tuple(sorted(_loaders))


def backend(name: str) -> Backend:
    """The backend registered as ``name``, loaded at the first request; a ValueError naming ``name`` and the known
    backends if there is none."""
    if name not in _loaders:
        known = ", ".join(map(repr, known_backends()))
        raise ValueError(f"unknown framework {name!r}: the known backends are {known}")
    if name not in _loaded:
        loaded = _loaders[name]()
        if not isinstance(loaded, Backend):
            raise TypeError(f"the loader of backend {name!r} returned {type(loaded).__name__}, not a Backend")
        _loaded[name] = loaded
    return _loaded[name]


def backend_for_trajectory(trajectory: Trajectory) -> Backend:
    """The backend of the framework that wrote ``trajectory`` (its run config's ``framework``;
    :data:`DEFAULT_FRAMEWORK` for files that record none)."""
    return backend(trajectory.config.get("framework", DEFAULT_FRAMEWORK))


def _load_torch() -> Backend:
    from .torch import BACKEND

    return BACKEND


def _load_tensorflow() -> Backend:
    try:
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise ValueError(f"framework 'tensorflow' needs TensorFlow, which is not importable here ({error}): install "
                         "the extra, pip install 'gradvis[tensorflow]'") from None
    from .tensorflow import BACKEND

    return BACKEND


register_backend("torch", _load_torch)
register_backend("tensorflow", _load_tensorflow)

__all__ = ["DEFAULT_FRAMEWORK", "Backend", "backend", "backend_for_trajectory", "known_backends", "register_backend"]
