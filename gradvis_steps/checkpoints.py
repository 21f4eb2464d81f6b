"""Choosing which checkpoints of a trajectory a step works on (every k-th, a list, one chunk of them), and which of
them an analysis must skip (non-finite: the run diverged there)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.training import TrainingPoint, non_finite_reason  # the check training applies before storing a point

if TYPE_CHECKING:
    from .storage.trajectory import Trajectory


def parse_chunk(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based chunk i of n) -> (i - 1, n); None -> (0, 1)."""
    if text is None:
        return 0, 1
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = 0, 0
    if not sep or not 1 <= i <= n:
        raise ValueError(f"--chunk must look like i/n with 1 <= i <= n, got {text!r}")
    return i - 1, n


def select_rows(iterations: np.ndarray, *, every: int = 1, wanted: list[int] | None = None,
                chunk: str | None = None) -> np.ndarray:
    """Rows of the trajectory to process: the checkpoints at ``wanted`` iterations, or every ``every``-th
    row plus the last one; then the ``chunk`` (contiguous part i of n) of that selection."""
    iterations = np.asarray(iterations)
    if wanted:
        missing = sorted(set(wanted) - set(iterations.tolist()))
        if missing:
            raise ValueError(f"no checkpoint at iteration(s) {missing[:5]}; the trajectory has iterations "
                             f"{iterations.min()}..{iterations.max()} ({len(iterations)} checkpoints)")
        rows = np.array([int(np.flatnonzero(iterations == it)[0]) for it in wanted])
    else:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        rows = np.arange(0, len(iterations), every)
        if rows[-1] != len(iterations) - 1:
            rows = np.append(rows, len(iterations) - 1)
    index, count = parse_chunk(chunk)
    return np.array_split(rows, count)[index]


class UnusableCheckpoint(ValueError):
    """A checkpoint an analysis cannot use: non-finite parameters, buffers, recorded batch loss or evaluated loss (the
    run diverged there). A ValueError, so a step that needs that checkpoint ends with this one line."""

    def __init__(self, message: str, iteration: int, reason: str):
        super().__init__(message)
        self.iteration, self.reason = int(iteration), reason


def checkpoint_problem(trajectory: Trajectory, row: int) -> str | None:
    """Why checkpoint ``row`` cannot be analysed, judged from the file alone: non-finite parameters or buffers, or a
    non-finite batch loss recorded in training (it diverged there; a loss not known, NaN, as at the last row, from
    which no step was taken, or in a run recorded or imported without losses, is no divergence). None if the
    checkpoint is usable."""
    buffers = trajectory.buffers(row) if trajectory.buffer_layout else np.zeros(0)
    reason = non_finite_reason(TrainingPoint(trajectory.params(row), buffers, int(trajectory.iterations[row]),
                                             int(trajectory.epochs[row]), None))
    if reason is not None:
        return reason
    row = row % len(trajectory)
    loss = float(trajectory.batch_loss[row])
    if trajectory.batch_loss_known[row] and not np.isfinite(loss):
        return f"batch loss {loss} recorded in training"
    return None


def loss_problem(loss: float) -> str | None:
    """Why a checkpoint whose parameters are finite still cannot be analysed: its loss evaluates non-finite."""
    return None if np.isfinite(loss) else f"loss evaluates to {loss}"


def skip_checkpoint(skipped: list[dict[str, Any]], source: object, iteration: int, reason: str,
                    what: str = "checkpoint at iteration", why: str = "the run diverged there") -> None:
    """Record a skipped checkpoint (or point) in ``skipped`` (stored in the output's ``skipped`` attribute) and warn on
    stderr."""
    skipped.append({"iteration": int(iteration), "reason": reason})
    print(f"warning: {source}: skipped the {what} {int(iteration)} ({reason}; {why})", file=sys.stderr)


def usable_or_error(trajectory: Trajectory, row: int, role: str, advice: str) -> None:
    """Raise :class:`UnusableCheckpoint` if checkpoint ``row`` (the analysis' ``role``: centre, final point, ...) is not
    usable, naming the checkpoint, the divergence and ``advice``."""
    reason = checkpoint_problem(trajectory, row)
    if reason is not None:
        raise unusable(trajectory, row, role, reason, advice)


def unusable(trajectory: Trajectory, row: int, role: str, reason: str, advice: str) -> UnusableCheckpoint:
    """The one-line error of an analysis whose ``role`` checkpoint ``row`` is not usable for ``reason``."""
    iteration = int(trajectory.iterations[row])
    return UnusableCheckpoint(f"{trajectory.path}: the {role} (checkpoint at iteration {iteration}) is not finite "
                              f"({reason}): the run diverged there; {advice}", iteration, reason)
