"""Record a PyTorch training loop of the user's own as a gradvis trajectory (``gradvis_steps.record.Recorder``).

The recorded file is what the train step writes: flat float32 parameters in the model's layout order, float64
buffers, the iteration (optimizer steps taken), epoch and batch loss of each checkpoint, and a run config naming the
model and dataset entry points that the analyses rebuild the model from (``source: {kind: recorded, ...}``, no
``train`` key). Two ways to feed it, the same checkpoints either way:

- ``rec.record(step)`` at the top of each iteration, before the forward pass (``step`` = optimizer steps taken so
  far), then ``rec.batch_loss(loss.item())`` once the loss is known, and ``rec.record(total_steps, force=True)``
  after the loop for the final point (``force``: stored whatever ``every``, as the train step stores it);
- ``rec.attach(optimizer)``: records theta_0 now and theta_t after each t-th ``optimizer.step()`` (every ``every``
  steps, via ``Optimizer.register_step_post_hook``); ``rec.batch_loss(loss.item())`` in the next iteration gives its
  loss (else it is not known); :meth:`Recorder.close` adds the final point.

``record(step, batch_loss=loss.item())`` in one call after the forward pass records the same parameters, but a
model with batch-norm has then already updated its running statistics with that batch: the train step stores the
buffers from before it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.layout import ParameterLayout
from ...losses import normalize
from ...provenance import provenance
from ...storage.recording import RecordingSession, as_spec, model_inputs, recorded_config
from .flat import buffer_layout, flatten_buffers, flatten_parameters, layout_of
from .models import build_model


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A torch optimizer as JSON: its class and each param group's hyperparameters (a scheduler's ``initial_lr``
    as ``lr``, so a run resumed with a scheduled learning rate describes itself alike)."""
    groups = []
    for group in optimizer.param_groups:
        settings = {key: _plain(value) for key, value in group.items() if key not in ("params", "initial_lr")}
        if "initial_lr" in group:
            settings["lr"] = _plain(group["initial_lr"])
        groups.append(dict(sorted(settings.items())))
    return {"class": type(optimizer).__name__, "param_groups": groups}


def _plain(value: Any) -> Any:
    """A JSON value for a hyperparameter (tensors as numbers, tuples as lists, anything else as its repr)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _same_layout(a: ParameterLayout, a_buffers: list[dict], b: ParameterLayout, b_buffers: list[dict]) -> bool:
    return a == b and a_buffers == b_buffers


class Recorder:
    """Writes the checkpoints of the user's ``model`` to a trajectory file at ``path`` (committed by :meth:`close`
    or at the end of a ``with`` block; an exception in the block leaves ``<path>.partial``, appended to when a
    recorder opens the same path again with the same run config).

    ``model_spec``/``dataset_spec``: ``"module:function"`` (a custom entry point), a built-in name, or a spec dict;
    the analyses rebuild the model from them, so the model they build must have ``model``'s parameter and buffer
    layout (checked here). ``loss``: the loss spec. ``every``: record steps that are multiples of it.
    ``optimizer``: a torch optimizer (described automatically) or a free-form JSON description, for provenance.
    """

    def __init__(self, path: str | os.PathLike, model: nn.Module, *, model_spec: str | dict[str, Any],
                 dataset_spec: str | dict[str, Any], loss: str | dict[str, Any] = "cross_entropy", every: int = 1,
                 optimizer: torch.optim.Optimizer | Any = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        description = describe_optimizer(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        config = recorded_config("torch", as_spec(dataset_spec, "dataset_spec"), as_spec(model_spec, "model_spec"),
                                 normalize(loss), description, every)
        self.model = model
        self.layout = layout_of(model)
        buffers = buffer_layout(model)
        self._check_against_spec(config, self.layout, buffers)
        self.session = RecordingSession(path, self.layout, buffers, config, provenance(config), every=every,
                                        same_layout=_same_layout)
        self.config = config
        self._hook: Any = None
        self._hook_step: int | None = None

    @staticmethod
    def _check_against_spec(config: dict[str, Any], layout: ParameterLayout, buffers: list[dict]) -> None:
        """The model the specs build (the analyses' model) must be laid out as the user's: one error line if not."""
        data = model_inputs(config["dataset"])
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the user's RNG alone
            built = build_model(config["model"], data.input_shape, data.num_classes)
        theirs, their_buffers = layout_of(built), buffer_layout(built)
        if theirs != layout:
            mine = {spec.name: spec.shape for spec in layout}
            other = {spec.name: spec.shape for spec in theirs}
            differ = sorted(name for name in set(mine) | set(other) if mine.get(name) != other.get(name))
            detail = (f"parameters {differ[:5]} differ (model: {[mine.get(n) for n in differ[:5]]}, spec: "
                      f"{[other.get(n) for n in differ[:5]]})" if differ else "the parameters' order or kinds differ")
            raise ValueError(f"the model does not match model_spec {config['model']}: {detail}; the analyses "
                             "rebuild the model from the spec, so it must build this model")
        if their_buffers != buffers:
            raise ValueError(f"the model's buffers {[(b['name'], b['shape']) for b in buffers][:5]} do not match "
                             f"those model_spec {config['model']} builds "
                             f"{[(b['name'], b['shape']) for b in their_buffers][:5]}")

    # -- recording ---------------------------------------------------------------------------------------------
    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """theta (float32, layout order) and the buffers (float64), on the host: as the train step stores them."""
        flat = flatten_parameters(self.model, self.layout)
        return flat.to("cpu", torch.float32).numpy(), flatten_buffers(self.model)

    @property
    def epoch(self) -> int:
        """The epoch points are recorded in when :meth:`record` is given none: the last one given (0 at first; on
        resume the last one stored). Set it at each epoch's start in the optimizer-hook mode: the point the hook
        recorded after the previous epoch's last step takes it too, as its step is taken in this epoch."""
        return self.session.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.session.epoch = value

    def record(self, step: int, batch_loss: float | None = None, *, epoch: int | None = None,
               force: bool = False) -> bool:
        """Record theta_``step`` (the parameters after ``step`` optimizer steps) if ``step`` is a multiple of
        ``every`` or ``force``; ``batch_loss``: the loss of the batch the step from it uses (or give it later with
        :meth:`batch_loss`). Steps must increase strictly. Returns whether the point was recorded."""
        if self._hook is not None:
            raise ValueError("this recorder is attached to an optimizer, which records the steps: call batch_loss() "
                             "for the losses, not record()")
        return self.session.offer(step, self._snapshot, batch_loss=batch_loss, epoch=epoch, force=force)

    def batch_loss(self, value: float | torch.Tensor) -> None:
        """The loss of the batch the step from the newest recorded point uses (a float or a one-element tensor)."""
        self.session.batch_loss(value.item() if isinstance(value, torch.Tensor) else value)

    def attach(self, optimizer: torch.optim.Optimizer, start: int | None = None) -> Recorder:
        """Record theta_``start`` now and every ``every``-th point after each ``optimizer.step()``; ``start``: steps
        already taken (default: 0 in a new file; in a file appended to, its last step, the point a run interrupted
        there continues from, which is stored already and kept as it is)."""
        if self._hook is not None:
            raise ValueError("this recorder is already attached to an optimizer")
        session = self.session
        if start is None:
            start = 0 if session.last_step is None else session.last_step
        if not (start == session.last_step == session.last_recorded):
            session.offer(start, self._snapshot)
        self._hook_step = int(start)

        def after_step(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
            self._hook_step += 1
            self.session.offer(self._hook_step, self._snapshot)

        self._hook = optimizer.register_step_post_hook(after_step)
        return self

    def close(self, commit: bool = True) -> Path | None:
        """Detach from the optimizer, write the held point and, with ``commit``, add the final point if ``every``
        skipped it and rename the file onto its path (returned); ``commit=False`` keeps ``<path>.partial`` to append
        to later (a recorder attached there continues from its last step)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
            if commit:
                self.session.finish(self._snapshot)  # the final point, when every skipped it
        return self.session.close(commit)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.close(commit=kind is None)


__all__ = ["Recorder", "describe_optimizer"]
