"""Cost of one training frame (3D surface | contour | density, paper Figure 1) against drawing it whole.

Requirement (issue 19): frames stay cheap with the 3D panel: static parts drawn once, only the moving artists per
frame. Inputs are synthetic at the paper's sizes (a 50 x 50 landscape, ``--checkpoints`` checkpoints, SLQ k=10,
m=80 per checkpoint). Reported, as medians over the frames after the first:

* ``blit``: ``TrainingFrames`` as the frames step uses it (background restored, moving artists drawn) plus the
  PNG encoding of ``write_frames``;
* ``full``: the baseline, the same figure in the same process with every artist drawn for every frame (the
  background dropped before each frame) plus the same PNG encoding;
* ``switch``: a frame on which a moving frame changes landscape (surface and contours redrawn), from a run over
  two landscapes;
* ``ratio = blit / full``.

Run: ``python bench/frame_cost.py [--checkpoints 40] [--dpi 80] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import io
import time
from typing import Any

import _common as C


def synthetic(checkpoints: int, resolution: int, centre: int | None, seed: int = 0) -> tuple[Any, Any]:
    """A 2D landscape with a spiralling trajectory and SLQ-like spectra (bulk near 0, a few outliers)."""
    import numpy as np

    from gradvis_steps.core.grid import LandscapeResult
    from gradvis_steps.core.slq import SLQResult, spectrum_summary
    from gradvis_steps.storage.spectra import CheckpointSpectrum, Spectra

    iterations = np.arange(checkpoints) * 5
    angle = np.linspace(0, 3, checkpoints)
    traj = np.column_stack([np.cos(angle) * (1 - angle / 3), np.sin(angle) * (1 - angle / 3)])
    x = y = np.linspace(-1.5, 1.5, resolution)

    def loss(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return 0.5 + a**2 + 2 * b**2 + 0.3 * np.sin(3 * a)

    X, Y = np.meshgrid(x, y, indexing="ij")
    land = LandscapeResult(axes=(x, y), loss=loss(X, Y), trajectory=traj, trajectory_loss=loss(traj[:, 0], traj[:, 1]),
                           checkpoint_loss=loss(traj[:, 0], traj[:, 1]), iterations=iterations, method="pca",
                           labels=("d1", "d2"), center_iteration=centre)
    rng = np.random.default_rng(seed)
    entries = {}
    for it in iterations:
        nodes = np.sort(rng.normal(0, 0.1, (10, 80)) + rng.exponential(3, (10, 80)) * (rng.random((10, 80)) < .05), 1)
        weights = rng.random((10, 80))
        weights /= weights.sum(1, keepdims=True)
        result = SLQResult(nodes, weights, rng.random(10), 10_000, 0, np.arange(10))
        entries[int(it)] = CheckpointSpectrum(int(it), nodes, weights, result.alpha1, np.zeros(2), np.zeros(2),
                                              {**spectrum_summary(result), "negative_tol": 1e-3})
    return land, Spectra(entries, {})


def frame_times(sequence: Any, full: bool) -> list[float]:
    """Seconds of each frame: render (full redraw if ``full``) and PNG encoding, as the frames step writes it."""
    from PIL import Image

    times = []
    frames = iter(sequence)
    while True:
        if full:
            sequence.blitter.background = None
        start = time.perf_counter()
        try:
            _, image = next(frames)
        except StopIteration:
            return times
        Image.fromarray(image[..., :3]).save(io.BytesIO(), format="PNG", compress_level=3)
        times.append(time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table (and JSON with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    C.add_common_args(p, device=False)
    p.add_argument("--checkpoints", type=int, default=40, help="checkpoints with a spectrum (default 40)")
    p.add_argument("--resolution", type=int, default=50, help="grid points per axis (default 50, the paper's)")
    p.add_argument("--dpi", type=int, default=80, help="frame resolution (default 80, the frames step's)")
    args = p.parse_args(argv)
    threads = C.setup_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    from gradvis_steps.render.frames import TrainingFrames

    land, spectra = synthetic(args.checkpoints, args.resolution, None)
    blit = frame_times(TrainingFrames([land], spectra, dpi=args.dpi), full=False)
    full = frame_times(TrainingFrames([land], spectra, dpi=args.dpi), full=True)
    middle = int(land.iterations[len(land.iterations) // 2])
    first, _ = synthetic(args.checkpoints, args.resolution, 0)
    second, _ = synthetic(args.checkpoints, args.resolution, middle)
    moving = TrainingFrames([first, second], spectra, dpi=args.dpi)
    moving_times = frame_times(moving, full=False)
    switch = moving_times[moving.keys.index(middle)]
    rows = {"blit_ms": 1e3 * C.median(blit[1:]), "full_ms": 1e3 * C.median(full[1:]),
            "first_frame_ms": 1e3 * blit[0], "switch_ms": 1e3 * switch}
    rows["ratio"] = rows["blit_ms"] / rows["full_ms"]
    C.print_table(["frame", "ms"], [[key, value] for key, value in rows.items()])
    C.write_json(args.json, {"results": rows, "args": vars(args), "threads": threads, "environment": C.environment(),
                             "load": C.load_snapshot()})


if __name__ == "__main__":
    main()
