"""Training settings (what the train step records in a trajectory's run config), the divergence check and the
training loop, the same for every framework (a backend gives the step and the state it keeps)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and checkpoint settings (paper section 3.3: batch 256, lr 0.01/0.001, momentum 0.9)."""

    epochs: int = 1
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    checkpoint_every: int = 1
    max_iterations: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every}
        for key, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1 or unset, got {self.max_iterations!r}")


@dataclass(frozen=True, eq=False)
class TrainingPoint:
    """One point of training: theta_t (flat parameters and buffers) and the loss of the batch the step from it used
    (None: not known, the point after the last step)."""

    params: np.ndarray
    buffers: np.ndarray
    iteration: int
    epoch: int
    batch_loss: float | None


def non_finite_reason(point: TrainingPoint) -> str | None:
    """Why ``point`` is not a usable checkpoint (a non-finite batch loss, parameter or buffer), or None if it is."""
    if point.batch_loss is not None and not math.isfinite(point.batch_loss):
        return f"batch loss {point.batch_loss}"
    bad = int(np.count_nonzero(~np.isfinite(point.params)))
    if bad:
        return f"{bad} of {point.params.size} parameters non-finite"
    if point.buffers.size and not np.isfinite(point.buffers).all():
        return "non-finite buffers (batch-norm statistics)"
    return None


class TrainingDiverged(ValueError):
    """Training reached a point with a non-finite batch loss (or parameters) at ``point.iteration``: that point and
    every later one are unusable. ``stored`` checkpoints before it are in the writer; ``last`` is the last finite
    point (theta_{t-1}; None at iteration 0 or right after a resume from a file without it). A ValueError, so the
    train step reports it in one line (exit status 2)."""

    def __init__(self, point: TrainingPoint, reason: str, settings: TrainSettings, stored: int,
                 last: TrainingPoint | None):
        self.point, self.reason, self.settings, self.stored, self.last = point, reason, settings, stored, last
        self.last_is_stored = last is None or last.iteration % settings.checkpoint_every == 0
        #: checkpoints a kept trajectory holds: the stored ones plus the last finite point when it was not stored
        self.kept = stored + (0 if self.last_is_stored else 1)
        if self.kept:
            advice = (f"lower train.lr (--lr), or set train.on_divergence: keep (--on-divergence keep) to keep the "
                      f"{self.kept} checkpoint(s) before it")
        else:
            advice = "nothing before it to keep: check the model, the data and train.lr"
        super().__init__(f"{self.describe()}; {advice}")

    def describe(self) -> str:
        """Where and why training diverged, e.g. "training diverged at iteration 412 (epoch 3 of 6): batch loss nan
        (lr 1e+06)"."""
        return (f"training diverged at iteration {self.point.iteration} (epoch {self.point.epoch + 1} of "
                f"{self.settings.epochs}): {self.reason} (lr {self.settings.lr:g})")

    @property
    def diverged_at(self) -> dict[str, Any]:
        """The record a kept trajectory stores (attribute ``diverged_at``, JSON)."""
        loss = self.point.batch_loss
        return {"iteration": self.point.iteration, "epoch": self.point.epoch, "reason": self.reason,
                "batch_loss": None if loss is None else str(loss) if not math.isfinite(loss) else loss}

    def keep(self, writer: Any) -> dict[str, Any]:
        """``--on-divergence keep``: end the trajectory in ``writer`` at the last finite point (appended when it
        was not a stored checkpoint, with its finite batch loss); returns the run's summary."""
        if self.kept == 0:
            raise ValueError(f"{self.describe()}; no checkpoint before it to keep")
        if not self.last_is_stored:
            last = self.last
            writer.append(last.params, last.buffers, iteration=last.iteration, epoch=last.epoch,
                          batch_loss=last.batch_loss)
        every = self.settings.checkpoint_every
        final = self.last.iteration if self.last is not None else (self.point.iteration - 1) // every * every
        return {"iterations": final, "checkpoints": len(writer),
                "last_batch_loss": None if self.last is None else self.last.batch_loss,
                "diverged_at": self.diverged_at}


class DivergenceGuard:
    """Checks every point of a training run before it may be stored, the same in every backend: the first point
    with a non-finite batch loss, parameter or buffer raises :class:`TrainingDiverged`, so a trajectory never
    holds one. Remembers the last finite point (part of the resume state, so a resumed run keeps the same one)."""

    _RESUME_KEYS = ("last_params", "last_buffers", "last_iteration", "last_epoch", "last_loss")

    def __init__(self, settings: TrainSettings):
        self.settings = settings
        self.last: TrainingPoint | None = None

    def check(self, params: np.ndarray, buffers: np.ndarray, batch_loss: float | None, *, iteration: int,
              epoch: int, stored: int) -> None:
        """Pass theta_``iteration`` (``batch_loss``: the loss of the batch the step from it used; None after the
        last step); ``stored``: checkpoints written so far."""
        point = TrainingPoint(params, buffers, int(iteration), int(epoch), batch_loss)
        reason = non_finite_reason(point)
        if reason is not None:
            raise TrainingDiverged(point, reason, self.settings, stored, self.last)
        self.last = point

    def resume_state(self) -> dict[str, Any]:
        """The last finite point, for the writer's resume state (empty before the first point)."""
        last = self.last
        if last is None or last.batch_loss is None:
            return {}
        return {"last_params": last.params, "last_buffers": last.buffers, "last_iteration": last.iteration,
                "last_epoch": last.epoch, "last_loss": last.batch_loss}

    def restore(self, state: dict[str, Any]) -> None:
        """Take the last finite point back from a resume state (files written before it was recorded lack it)."""
        if all(key in state for key in self._RESUME_KEYS):
            self.last = TrainingPoint(np.asarray(state["last_params"]), np.asarray(state["last_buffers"]),
                                      int(state["last_iteration"]), int(state["last_epoch"]),
                                      float(state["last_loss"]))


def run_training(settings: TrainSettings, n_samples: int, writer: Any, *,
                 snapshot: Callable[[], tuple[np.ndarray, np.ndarray]],
                 order: Callable[[int], Any],
                 step: Callable[[Any], float],
                 optimizer_state: Callable[[], dict[str, Any]],
                 restore: Callable[[dict[str, Any]], None],
                 progress: bool = True) -> dict[str, Any]:
    """The training loop of every backend: epochs of mini-batches, a checkpoint every k iterations, resume state at
    each epoch boundary, every point checked by a :class:`DivergenceGuard` before it is stored.

    Checkpoint t holds theta_t, the parameters after t optimizer steps (t = 0 is the initial point; the final point
    is always stored), with ``batch_loss`` = the loss of the mini-batch the step from t used (not known, NaN, for the
    final point, from which no step is taken). The backend gives: ``snapshot()`` -> (float32 parameters, float64
    buffers) on the host; ``order(epoch)`` -> the epoch's sample order (a function of seed and epoch only, so a
    resumed run repeats the uninterrupted one); ``step(indices)`` -> one SGD step on those samples, returning the
    batch loss; ``optimizer_state()`` -> what else a resume needs (momentum, RNG state); ``restore(state)`` -> put
    parameters, buffers and that state back from the writer's resume state.
    """
    steps_per_epoch = math.ceil(n_samples / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if settings.max_iterations is not None:
        total = min(total, settings.max_iterations)

    iteration, start_epoch = 0, 0
    guard = DivergenceGuard(settings)
    state = writer.resume_state()
    if state is not None:
        guard.restore(state)
        restore(state)
        iteration, start_epoch = int(state["iteration"]), int(state["next_epoch"])
        writer.truncate(int(state["n_checkpoints"]))
        print(f"resuming at iteration {iteration} (epoch {start_epoch + 1} of {settings.epochs}) from "
              f"{int(state['n_checkpoints'])} checkpoints", file=sys.stderr)
    elif len(writer):
        writer.truncate(0)

    bar = tqdm(total=total, initial=iteration, disable=not progress, desc="train", unit="it", mininterval=1.0)
    last_loss = float("nan")
    for epoch in range(start_epoch, settings.epochs):
        if iteration >= total:
            break
        indices = order(epoch)
        for start in range(0, n_samples, settings.batch_size):
            if iteration >= total:
                break
            params, buffers = snapshot()  # theta_t before the step updates the batch-norm statistics
            last_loss = float(step(indices[start:start + settings.batch_size]))
            guard.check(params, buffers, last_loss, iteration=iteration, epoch=epoch, stored=len(writer))
            if iteration % settings.checkpoint_every == 0:
                writer.append(params, buffers, iteration=iteration, epoch=epoch, batch_loss=last_loss)
            iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
        params, buffers = snapshot()
        writer.save_resume_state({
            "params": params, "buffers": buffers, **optimizer_state(), "iteration": iteration,
            "next_epoch": epoch + 1, "n_checkpoints": len(writer), **guard.resume_state(),
        })
    bar.close()
    params, buffers = snapshot()
    final_epoch = (iteration - 1) // steps_per_epoch if iteration else 0
    guard.check(params, buffers, None, iteration=iteration, epoch=final_epoch, stored=len(writer))
    writer.append(params, buffers, iteration=iteration, epoch=final_epoch, batch_loss=None)
    return {"iterations": iteration, "checkpoints": len(writer), "last_batch_loss": last_loss,
            "steps_per_epoch": steps_per_epoch}
