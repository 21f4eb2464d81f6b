"""Choosing which checkpoints of a trajectory a step works on (every k-th, a list, one chunk of them)."""

from __future__ import annotations

import numpy as np


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
