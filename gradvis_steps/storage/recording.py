"""Recording a user's own training run into a trajectory file, the framework-neutral part (the recorders of
``backends/<framework>/recorder.py`` give the snapshots).

A recorded checkpoint t holds theta_t, the parameters after t optimizer steps, and the buffers as they are before the
forward pass from theta_t (what the train step stores); its batch loss is the loss of the mini-batch the step from
theta_t uses, given with the point or later (:meth:`RecordingSession.batch_loss`, before the next point), or not
known (NaN, ``batch_loss_known`` False: no divergence). A row is written when the next point comes or the session
closes, so the loss of the step from a point can still be added to it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..core.layout import ParameterLayout
from .trajectory import Trajectory, TrajectoryWriter, partial_path


def as_spec(value: str | dict[str, Any], what: str) -> dict[str, Any]:
    """A model or dataset spec: ``"module:function"`` -> ``{"name": "custom", "entry_point": ...}``, a plain name ->
    ``{"name": name}`` (a built-in one), a dict -> a copy of it (it must have a ``name``)."""
    if isinstance(value, str) and value:
        return {"name": "custom", "entry_point": value} if ":" in value else {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    raise ValueError(f"{what} must be 'module:function', a built-in name or a dict with a 'name', got {value!r}")


def recorded_config(framework: str, dataset: dict[str, Any], model: dict[str, Any], loss: dict[str, Any],
                    optimizer: Any, every: int) -> dict[str, Any]:
    """The run config of a recorded run (no ``train`` key: gradvis did not train it)."""
    try:
        json.dumps(optimizer)
    except TypeError:
        raise ValueError(f"the optimizer description must be JSON (a string or a dict of plain values), got "
                         f"{optimizer!r}") from None
    return {"framework": framework, "dataset": dataset, "model": model, "loss": loss,
            "source": {"kind": "recorded", "optimizer": optimizer, "every": int(every)}}


def model_inputs(dataset: dict[str, Any]) -> Any:
    """What building the model needs of the dataset (``input_shape``, ``num_classes``): from the spec where it tells
    (built-in sets), else from loading the data (a custom loader)."""
    from ..data import dataset_facts, load_dataset

    facts = dataset_facts(dataset)
    if facts is not None:
        return SimpleNamespace(input_shape=facts.input_shape, num_classes=facts.num_classes)
    return load_dataset(dataset)


def _epoch(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"epoch must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass
class _Point:
    params: np.ndarray
    buffers: np.ndarray
    step: int
    epoch: int
    batch_loss: float | None


class RecordingSession:
    """The trajectory file of one recording: opens (or appends to) it, checks that steps increase, keeps the newest
    point until its batch loss may be known, commits on :meth:`close`.

    An existing ``<path>.partial`` or committed ``path`` is appended to when it holds the same run config (a committed
    file is renamed back to ``.partial`` until the next commit); new steps must come after its last one."""

    def __init__(self, path: str | os.PathLike, layout: ParameterLayout, buffer_layout: list[dict],
                 config: dict[str, Any], provenance: dict[str, Any], *, every: int,
                 same_layout: Callable[[ParameterLayout, list[dict], ParameterLayout, list[dict]], bool]):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.path, self.every = Path(path), every
        partial = partial_path(path)
        existing = partial if partial.exists() else self.path if self.path.exists() else None
        #: the last step given to :meth:`offer` (None before the first)
        self.last_step: int | None = None
        #: the step of the last point recorded (None before the first)
        self.last_recorded: int | None = None
        self._epoch = 0
        self._pending: _Point | None = None
        if existing is not None:
            with Trajectory(existing) as stored:
                if stored.config != json.loads(json.dumps(config)):
                    differ = sorted(k for k in set(stored.config) | set(config)
                                    if stored.config.get(k) != json.loads(json.dumps(config.get(k))))
                    raise ValueError(f"cannot append to {existing}: it records another run (its {', '.join(differ)} "
                                     "differ); record to another path or delete that file")
                if not same_layout(stored.layout, stored.buffer_layout, layout, buffer_layout):
                    raise ValueError(f"cannot append to {existing}: its parameter or buffer layout is not the model's")
                if len(stored):
                    self.last_step, self._epoch = int(stored.iterations[-1]), int(stored.epochs[-1])
                    self.last_recorded = self.last_step
            if existing == self.path:
                os.replace(self.path, partial)
        self.writer = TrajectoryWriter(path, layout, buffer_layout, config, provenance, resume=existing is not None)

    @property
    def epoch(self) -> int:
        """The epoch points are recorded in when none is given: the last one given (0 at first). Setting it also
        sets the newest point's, while the step from it is still to come (a point recorded after the last step of an
        epoch belongs to the next epoch, whose first step is taken from it, as in the train step)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = _epoch(value)
        if self._pending is not None and self._pending.step == self.last_step:
            self._pending.epoch = self._epoch

    def __len__(self) -> int:
        """Checkpoints recorded so far (the one held for its loss included)."""
        return len(self.writer) + (self._pending is not None)

    def wants(self, step: int) -> bool:
        return step % self.every == 0

    def offer(self, step: int, snapshot: Callable[[], tuple[np.ndarray, np.ndarray]], *,
              batch_loss: float | None = None, epoch: int | None = None, force: bool = False) -> bool:
        """Theta_``step``: recorded (``snapshot()`` taken) if ``step`` is a multiple of ``every`` or ``force``;
        returns whether it was. Steps must increase strictly; ``epoch`` None: :attr:`epoch`."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an integer >= 0 (optimizer steps taken), got {step!r}")
        step = int(step)
        if not self.writer.file.id.valid:
            raise ValueError(f"the recording to {self.path} is closed: open a new recorder to append to it")
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"step {step} does not come after the last step recorded, {self.last_step}: steps must "
                             "increase strictly")
        if epoch is not None:
            self._epoch = _epoch(epoch)  # the new point's (the held one keeps its own)
        self.last_step = step
        if not (force or self.wants(step)):
            return False
        self._flush()
        params, buffers = snapshot()
        self._pending = _Point(params, buffers, step, self.epoch, None)
        self.last_recorded = step
        if batch_loss is not None:
            self.batch_loss(batch_loss)
        return True

    def finish(self, snapshot: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        """Record the point of the last step offered if ``every`` skipped it (the final point is always stored):
        ``snapshot()`` must give that point, as it does right after the optimizer step that reached it."""
        if self.last_step is not None and self.last_recorded != self.last_step:
            self._flush()
            params, buffers = snapshot()
            self._pending = _Point(params, buffers, self.last_step, self.epoch, None)
            self.last_recorded = self.last_step

    def batch_loss(self, value: float) -> None:
        """The loss of the batch the step from the newest point uses (ignored when that point was not recorded)."""
        if self._pending is None or self._pending.step != self.last_step:
            return
        try:
            loss = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"batch_loss must be a number, got {value!r}") from None
        self._pending.batch_loss = loss
        if not math.isfinite(loss):
            import warnings

            warnings.warn(f"batch loss {loss} at step {self.last_step}: the analyses skip this checkpoint as "
                          "diverged", stacklevel=3)

    def _flush(self) -> None:
        point, self._pending = self._pending, None
        if point is not None:
            self.writer.append(point.params, point.buffers, iteration=point.step, epoch=point.epoch,
                               batch_loss=point.batch_loss)

    def close(self, commit: bool = True) -> Path | None:
        """Write the held point; ``commit``: rename the file onto ``path`` (else ``<path>.partial`` stays, to be
        appended to). Returns the committed path. Closing twice does nothing."""
        if not self.writer.file.id.valid:
            return None
        self._flush()
        if commit and len(self.writer) == 0:
            self.writer.close()
            raise ValueError(f"nothing was recorded to {self.path}: no trajectory written "
                             f"({partial_path(self.path)} stays)")
        if commit:
            return self.writer.commit({"iterations": self.last_step, "checkpoints": len(self.writer)})
        self.writer.close()
        return None


__all__ = ["RecordingSession", "as_spec", "model_inputs", "recorded_config"]
