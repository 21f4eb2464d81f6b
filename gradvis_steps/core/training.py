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

#: the optimizers and learning-rate schedules of the train step (the first of each is the default)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer, schedule and checkpoint settings (paper section 3.3: SGD, batch 256, lr 0.01/0.001, momentum 0.9).

    ``optimizer``: ``sgd`` (torch's SGD: ``momentum``), ``adam`` or ``adamw`` (torch's Adam/AdamW: ``beta1``,
    ``beta2``, ``eps``, torch's defaults; ``momentum`` is not used). ``weight_decay``: coupled L2 (added to the
    gradient) for sgd and adam, decoupled (``theta *= 1 - lr_t * weight_decay``) for adamw, as torch does.
    ``schedule``: the learning rate of each iteration, :func:`learning_rate` (``warmup``, ``step_every``,
    ``step_gamma``, ``min_lr``). The defaults (sgd, constant, no warm-up) train as the step always has.
    """

    epochs: int = 1
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    checkpoint_every: int = 1
    max_iterations: int | None = None
    seed: int = 0
    optimizer: str = "sgd"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "constant"
    warmup: int = 0
    step_every: int | None = None
    step_gamma: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every}
        for key, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1 or unset, got {self.max_iterations!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if isinstance(self.warmup, bool) or int(self.warmup) != self.warmup or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0 (iterations), got {self.warmup!r}")
        if self.schedule == "step" and (self.step_every is None or int(self.step_every) != self.step_every
                                        or self.step_every < 1):
            raise ValueError(f"schedule step needs step_every, an integer >= 1 (iterations between decays), got "
                             f"{self.step_every!r}")
        if not 0 < self.step_gamma <= 1:
            raise ValueError(f"step_gamma must be in (0, 1], got {self.step_gamma!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr = {self.lr!r}], got {self.min_lr!r}")


def steps_per_epoch(settings: TrainSettings, n_samples: int) -> int:
    """The mini-batches of one epoch over ``n_samples``: ceil(n / batch size) (the last one may be smaller)."""
    return math.ceil(n_samples / settings.batch_size)


def total_iterations(settings: TrainSettings, n_samples: int) -> int:
    """The optimizer steps of a run: ``epochs`` x ceil(n / batch size), or ``max_iterations`` if fewer."""
    total = steps_per_epoch(settings, n_samples) * settings.epochs
    return total if settings.max_iterations is None else min(total, settings.max_iterations)


def is_checkpoint(settings: TrainSettings, iteration: int, total: int) -> bool:
    """Whether :func:`run_training` stores theta_t, t = ``iteration``, of a run of ``total`` steps: every
    ``checkpoint_every``-th iteration from 0, and the final point."""
    return iteration % settings.checkpoint_every == 0 or iteration == total


def checkpoint_iterations(settings: TrainSettings, n_samples: int) -> list[int]:
    """The iterations of the checkpoints a completed run stores, in order (0, k, 2k, ... and the last): the schedule
    the workflow's pre-flight checks a config against before any job runs."""
    total = total_iterations(settings, n_samples)
    return [t for t in range(total + 1) if is_checkpoint(settings, t, total)]


def check_schedule(settings: TrainSettings, total: int) -> None:
    """Refuse a warm-up that does not end before the run's ``total`` iterations (a ValueError naming both)."""
    if settings.warmup and settings.warmup >= total:
        raise ValueError(f"warmup {settings.warmup} is not less than the run's {total} iterations: the learning rate "
                         f"would never reach lr; accepted: 0..{total - 1}")


def learning_rate(settings: TrainSettings, iteration: int, total: int) -> float:
    """The learning rate of the step from theta_t to theta_{t+1} (t = ``iteration``) of a run of ``total`` steps: a
    pure function of t, so a resumed run needs no scheduler state. With W = ``warmup``, u = t - W, U = total - W:

    - warm-up, t < W:  lr_t = lr * (t + 1) / W  (linear, reaching lr at t = W - 1)
    - constant:        lr_t = lr
    - step:            lr_t = lr * step_gamma ** floor(u / step_every)
    - cosine:          lr_t = min_lr + (lr - min_lr) * (1 + cos(pi * u / U)) / 2  (lr at u = 0, min_lr at u = U)

    The schedule starts where the warm-up ends. Computed in float64 (Python floats); a constant schedule after the
    warm-up returns ``settings.lr`` itself, so the default trains bitwise as a fixed learning rate does.
    """
    t, warmup = int(iteration), int(settings.warmup)
    if t < warmup:
        return settings.lr * (t + 1) / warmup
    u = t - warmup
    if settings.schedule == "step":
        return settings.lr * settings.step_gamma ** (u // int(settings.step_every))
    if settings.schedule == "cosine":
        span = max(int(total) - warmup, 1)
        return settings.min_lr + (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * min(u, span) / span)) / 2
    return settings.lr


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
                 last: TrainingPoint | None, total: int | None = None):
        self.point, self.reason, self.settings, self.stored, self.last = point, reason, settings, stored, last
        self.total = total  # the run's iterations (the schedule's horizon); None: not known
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
        (lr 1e+06)"; with a schedule or warm-up, the learning rate of the step that led there and the peak lr
        ("(lr 0.0873 at the step before it; schedule cosine, warm-up 100, peak lr 0.1)")."""
        where = (f"training diverged at iteration {self.point.iteration} (epoch {self.point.epoch + 1} of "
                 f"{self.settings.epochs}): {self.reason}")
        settings = self.settings
        if (settings.schedule == "constant" and not settings.warmup) or self.total is None:
            return f"{where} (lr {settings.lr:g})"
        before = max(self.point.iteration - 1, 0)
        step = "at the step before it" if self.point.iteration else "at its first step"
        warmup = f", warm-up {settings.warmup}" if settings.warmup else ""
        return (f"{where} (lr {learning_rate(settings, before, self.total):g} {step}; schedule {settings.schedule}"
                f"{warmup}, peak lr {settings.lr:g})")

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

    def __init__(self, settings: TrainSettings, total: int | None = None):
        self.settings, self.total = settings, total
        self.last: TrainingPoint | None = None

    def check(self, params: np.ndarray, buffers: np.ndarray, batch_loss: float | None, *, iteration: int,
              epoch: int, stored: int) -> None:
        """Pass theta_``iteration`` (``batch_loss``: the loss of the batch the step from it used; None after the
        last step); ``stored``: checkpoints written so far."""
        point = TrainingPoint(params, buffers, int(iteration), int(epoch), batch_loss)
        reason = non_finite_reason(point)
        if reason is not None:
            raise TrainingDiverged(point, reason, self.settings, stored, self.last, self.total)
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
                 step: Callable[[Any, float], float],
                 optimizer_state: Callable[[], dict[str, Any]],
                 restore: Callable[[dict[str, Any]], None],
                 progress: bool = True) -> dict[str, Any]:
    """The training loop of every backend: epochs of mini-batches, a checkpoint every k iterations, resume state at
    each epoch boundary, every point checked by a :class:`DivergenceGuard` before it is stored.

    Checkpoint t holds theta_t, the parameters after t optimizer steps (t = 0 is the initial point; the final point
    is always stored), with ``batch_loss`` = the loss of the mini-batch the step from t used (not known, NaN, for the
    final point, from which no step is taken). The backend gives: ``snapshot()`` -> (float32 parameters, float64
    buffers) on the host; ``order(epoch)`` -> the epoch's sample order (a function of seed and epoch only, so a
    resumed run repeats the uninterrupted one); ``step(indices, lr)`` -> one optimizer step on those samples with
    learning rate ``lr`` (:func:`learning_rate` of the iteration, a Python float), returning the batch loss;
    ``optimizer_state()`` -> what else a resume needs (the optimizer's state: momentum, Adam's moments and step
    count; RNG state); ``restore(state)`` -> put parameters, buffers and that state back from the writer's resume
    state.
    """
    per_epoch = steps_per_epoch(settings, n_samples)
    total = total_iterations(settings, n_samples)
    check_schedule(settings, total)

    iteration, start_epoch = 0, 0
    guard = DivergenceGuard(settings, total)
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
            lr = learning_rate(settings, iteration, total)
            last_loss = float(step(indices[start:start + settings.batch_size], lr))
            guard.check(params, buffers, last_loss, iteration=iteration, epoch=epoch, stored=len(writer))
            if is_checkpoint(settings, iteration, total):
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
    final_epoch = (iteration - 1) // per_epoch if iteration else 0
    guard.check(params, buffers, None, iteration=iteration, epoch=final_epoch, stored=len(writer))
    writer.append(params, buffers, iteration=iteration, epoch=final_epoch, batch_loss=None)  # t = total: always stored
    return {"iterations": iteration, "checkpoints": len(writer), "last_batch_loss": last_loss,
            "steps_per_epoch": per_epoch}
