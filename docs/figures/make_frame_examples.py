"""Make docs/figures/frame_training.png and frame_interpolation.png from a real tiny run (two LeNets of widths
3, 4, 16, 12 on the digits, five epochs each), through the steps' command lines. Run from the repository root:

    PYTHONPATH=$PWD python docs/figures/make_frame_examples.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVAL = ["--eval-fraction", "0.2", "--no-progress"]
SLQ = ["--k", "5", "--m", "20", *EVAL]


def step(module: str, *argv: object) -> None:
    """Run ``python -m gradvis_steps.<module> argv`` and stop on failure."""
    subprocess.run([sys.executable, "-m", f"gradvis_steps.{module}", *map(str, argv)], check=True)


def main() -> None:
    """Train two runs, compute landscapes, line, plane and spectra, render the frames and keep one of each kind."""
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        for seed in (1, 2):
            step("train", "--model", "lenet", "--model-option", "widths=[3,4,16,12]", "--epochs", 5, "--batch-size", 64,
                 "--lr", 0.1, "--seed", seed, "--checkpoint-every", 5, "--no-progress", "--out", w / f"t{seed}.h5")
        step("directions", "--trajectory", w / "t1.h5", "--method", "pca", "--out", w / "pca.h5")
        step("landscape", "--trajectory", w / "t1.h5", "--directions", w / "pca.h5", "--resolution", 25,
             "--out", w / "land.h5", *EVAL)
        step("spectrum", "--trajectory", w / "t1.h5", "--every", 3, "--out", w / "spectra.h5", *SLQ)
        step("frames", "training", "--landscape", w / "land.h5", "--spectra", w / "spectra.h5", "--out-dir",
             w / "ft", "--dpi", 60, "--log-levels")
        step("directions", "--trajectory", w / "t1.h5", "--trajectory-b", w / "t2.h5", "--method", "interpolation",
             "--out", w / "interp.h5")
        step("landscape", "--trajectory", w / "t1.h5", "--directions", w / "interp.h5", "--range", -0.4, 1.4, -0.4,
             1.4, "--resolution", 25, "--out", w / "plane.h5", *EVAL)
        step("interpolate", "--trajectory-a", w / "t1.h5", "--trajectory-b", w / "t2.h5", "--points", 9,
             "--out-line", w / "line.h5", "--out-spectra", w / "line_spectra.h5", *SLQ)
        step("frames", "interpolation", "--line", w / "line.h5", "--plane", w / "plane.h5", "--spectra",
             w / "line_spectra.h5", "--out-dir", w / "fi", "--dpi", 60, "--log-levels")
        training = sorted((w / "ft").glob("frame_*.png"))
        shutil.copy(training[len(training) // 2], HERE / "frame_training.png")
        shutil.copy(w / "fi" / "frame_000004.png", HERE / "frame_interpolation.png")


if __name__ == "__main__":
    main()
