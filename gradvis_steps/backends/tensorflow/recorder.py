"""Record Keras ``model.fit`` as a gradvis trajectory: a callback (``gradvis_steps.record.KerasRecorder``).

At the start of each training batch the callback takes theta_t (t = ``model.optimizer.iterations``, the steps taken)
and the non-trainable variables (batch-norm moving statistics, before this batch updates them): what the TensorFlow
train step stores, flat float32 parameters in ``model.trainable_variables`` order and float64 buffers. At the end of
``fit`` it adds the final point and commits the file; a later ``fit`` with the same callback settings appends to it.

The batch loss: Keras passes batch callbacks ``logs["loss"]``, the running mean of the epoch's batch losses so far,
not the loss of the batch, so it is never stored as one. A checkpoint's batch loss is stored only when a log entry
holds it (``batch_loss_key``): :class:`BatchLoss` is a metric that reports the loss of the last batch, computed from
that batch's outputs by the loss function; without one the loss is not known (NaN, not a divergence).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ...losses import normalize
from ...provenance import provenance
from ...storage.recording import RecordingSession, as_spec, model_inputs, recorded_config
from .flat import buffer_layout, flatten_buffers, flatten_parameters, layout_of
from .models import build_model, dtype_policy


class BatchLoss(keras.metrics.Metric):
    """The loss of the last batch, ``loss_fn(y_true, y_pred)`` (a scalar), as a metric: ``logs[name]`` in batch
    callbacks is then the batch's loss (not the epoch's running mean ``logs["loss"]``). With ``loss_fn`` the
    compiled loss, the value is the loss ``fit`` differentiates (the same operations on the same outputs)."""

    def __init__(self, loss_fn: Callable[[Any, Any], Any], name: str = "batch_loss", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.loss_fn = loss_fn
        self.value = self.add_variable(shape=(), initializer="zeros", name="value")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        self.value.assign(keras.ops.cast(self.loss_fn(y_true, y_pred), self.value.dtype))

    def result(self) -> Any:
        return self.value.value

    def reset_state(self) -> None:
        self.value.assign(0.0)


def describe_optimizer(optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
    """A Keras optimizer as JSON: its class and its config (learning-rate schedules as their config)."""
    return {"class": type(optimizer).__name__,
            "config": _plain({k: v for k, v in optimizer.get_config().items() if k != "name"})}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _same_layout(a: Any, a_buffers: list[dict], b: Any, b_buffers: list[dict]) -> bool:
    """Keras layouts match up to names (automatic layer names differ between two builds in one process)."""
    fields = [(s.shape, s.kind, s.offset, s.filter_axis) for s in a]
    return (len(a) == len(b) and fields == [(s.shape, s.kind, s.offset, s.filter_axis) for s in b]
            and [(e["shape"], e["dtype"]) for e in a_buffers] == [(e["shape"], e["dtype"]) for e in b_buffers])


def _build_leaving_rng_alone(spec: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The model ``spec`` names, built without disturbing the user's random state (Python's, numpy's and Keras'
    global seed generator, which the initializers draw from; TensorFlow's global seed is not touched)."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    python_state, numpy_state = random.getstate(), np.random.get_state()
    generator = global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)
    try:
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
        with dtype_policy("float32"):
            return build_model(spec, input_shape, num_classes)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, generator)


class KerasRecorder(keras.callbacks.Callback):
    """Records ``model.fit`` into the trajectory file ``path`` (committed at the end of ``fit``; an existing file of
    the same run config is appended to). ``model_spec``/``dataset_spec``/``loss``/``every``/``optimizer`` as for the
    torch :class:`~gradvis_steps.backends.torch.recorder.Recorder` (``optimizer`` None: the model's, described
    automatically). ``batch_loss_key``: the log entry holding each batch's own loss (e.g. a :class:`BatchLoss`
    metric's name); None: losses not known. Needs ``steps_per_execution=1`` (a callback per batch)."""

    def __init__(self, path: str | os.PathLike, *, model_spec: str | dict[str, Any], dataset_spec: str | dict[str, Any],
                 loss: str | dict[str, Any] = "cross_entropy", every: int = 1, optimizer: Any = None,
                 batch_loss_key: str | None = None):
        super().__init__()
        self.path = Path(path)
        self._specs = (as_spec(dataset_spec, "dataset_spec"), as_spec(model_spec, "model_spec"), normalize(loss))
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every, self.optimizer_description, self.batch_loss_key = every, optimizer, batch_loss_key
        self.session: RecordingSession | None = None
        self._epoch: int | None = None

    # -- opening the file (needs the model, known once fit starts) ----------------------------------------------
    def _open(self) -> RecordingSession:
        model = self.model
        if getattr(model, "steps_per_execution", 1) not in (1, None):
            raise ValueError(f"KerasRecorder records every batch: compile the model with steps_per_execution=1, not "
                             f"{model.steps_per_execution}")
        description = self.optimizer_description
        if description is None and getattr(model, "optimizer", None) is not None:
            description = describe_optimizer(model.optimizer)
        dataset, model_spec, loss = self._specs
        config = recorded_config("tensorflow", dataset, model_spec, loss, description, self.every)
        layout, buffers = layout_of(model), buffer_layout(model)
        data = model_inputs(dataset)
        built = _build_leaving_rng_alone(model_spec, data.input_shape, data.num_classes)
        if not _same_layout(layout, buffers, layout_of(built), buffer_layout(built)):
            mine = [(s.name, s.shape) for s in layout]
            theirs = [(s.name, s.shape) for s in layout_of(built)]
            raise ValueError(f"the model does not match model_spec {model_spec}: its variables {mine[:4]}... against "
                             f"the spec's {theirs[:4]}...; the analyses rebuild the model from the spec, so it must "
                             "build this model")
        return RecordingSession(self.path, layout, buffers, config, provenance(config), every=self.every,
                                same_layout=_same_layout)

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return flatten_parameters(self.model).astype(np.float32), flatten_buffers(self.model)

    def _steps(self) -> int:
        return int(np.asarray(self.model.optimizer.iterations.numpy()))

    # -- callback hooks -----------------------------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.session is None:
            self.session = self._open()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch  # the epoch of the points recorded from this epoch's batches

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        step = self._steps()
        if step == self.session.last_step and self.session.last_recorded == step:
            return  # stored already: the final point of an earlier fit that this one continues
        self.session.offer(step, self._snapshot, epoch=self._epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.batch_loss_key is None:
            return
        if not logs or self.batch_loss_key not in logs:
            raise ValueError(f"batch_loss_key {self.batch_loss_key!r} is not among the batch logs "
                             f"{sorted(logs or {})}: add a BatchLoss metric of that name, or pass batch_loss_key=None")
        self.session.batch_loss(float(np.asarray(logs[self.batch_loss_key])))

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def close(self, commit: bool = True) -> Path | None:
        """Add the final point (theta after the last step, loss not known), write and, with ``commit``, commit the
        file (else ``<path>.partial`` stays to append to). ``fit`` calls it at its end."""
        session, self.session = self.session, None
        if session is None:
            return None
        steps = self._steps()
        if session.last_step is None or steps > session.last_step:
            session.offer(steps, self._snapshot, force=True)
        return session.close(commit)


__all__ = ["BatchLoss", "KerasRecorder", "describe_optimizer"]
