"""The step modules on a GPU against the same steps on the CPU, from one CPU-trained trajectory.

Trains the tiny LeNet of config/test.yaml on the CPU (and once on the GPU, which must simply run), then runs
eigendirections, landscape (2D, along the CPU's Hessian directions) and spectrum with ``--device cuda`` and
``--device cpu`` on the same trajectory and compares the numbers (float32 on both: agreement to ~1e-4).
Prints a table and exits non-zero on a mismatch. Run: ``python bench/gpu_steps.py --out DIR``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

EVAL = ["--eval-fraction", "0.1", "--eval-seed", "0", "--batch-size", "1024", "--dtype", "float32", "--no-progress"]
TRAIN = ["--dataset", "digits", "--model", "lenet", "--model-option", "widths=[3, 4, 16, 12]", "--seed", "0",
         "--lr", "0.05", "--batch-size", "256", "--epochs", "2", "--momentum", "0.9", "--no-progress"]


def step(module: str, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"gradvis_steps.{module}", *args], check=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    traj = str(out / "trajectory.h5")
    times = {"train cpu": step("train", *TRAIN, "--device", "cpu", "--out", traj)}
    times["train cuda"] = step("train", *TRAIN, "--device", "cuda", "--out", str(out / "trajectory_cuda.h5"))
    for dev in ("cpu", "cuda"):
        times[f"eigendirections {dev}"] = step(
            "eigendirections", "--trajectory", traj, "--which", "largest", "--count", "2", "--steps", "20",
            *EVAL, "--device", dev, "--out", str(out / f"eig_{dev}.h5"))
    step("directions", "--trajectory", traj, "--method", "hessian", "--eigendirections", str(out / "eig_cpu.h5"),
         "--pick", "0", "1", "--out", str(out / "dirs.h5"))
    for dev in ("cpu", "cuda"):
        times[f"landscape {dev}"] = step(
            "landscape", "--trajectory", traj, "--directions", str(out / "dirs.h5"), "--dims", "2",
            "--resolution", "9", *EVAL, "--device", dev, "--out", str(out / f"land_{dev}.h5"))
        times[f"spectrum {dev}"] = step(
            "spectrum", "--trajectory", traj, "--every", "10", "--k", "2", "--m", "20", *EVAL, "--device", dev,
            "--out", str(out / f"spec_{dev}.h5"))

    failures = []

    def compare(name: str, a: np.ndarray, b: np.ndarray, rtol: float) -> None:
        err = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
        ok = err <= rtol
        print(f"{name:40s} max rel diff {err:.2e} (tolerance {rtol:g}) {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(name)

    def datasets(path: Path) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda k, o: found.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset)
                         and o.dtype.kind == "f" else None)
        return found

    eig = [datasets(out / f"eig_{d}.h5") for d in ("cpu", "cuda")]
    for key in sorted(k for k in eig[0] if "value" in k):
        compare(f"eigendirections {key}", eig[0][key], eig[1][key], 5e-3)
    land = [datasets(out / f"land_{d}.h5") for d in ("cpu", "cuda")]
    for key in sorted(k for k in land[0] if "loss" in k or "accuracy" in k):
        compare(f"landscape {key}", land[0][key], land[1][key], 1e-3)
    spec = [datasets(out / f"spec_{d}.h5") for d in ("cpu", "cuda")]
    for key in sorted(k for k in spec[0] if k.endswith("top_eigenvalue") or k.endswith("nodes")):
        a, b = spec[0][key], spec[1][key]
        if key.endswith("nodes"):  # the extreme (converged) Ritz values of each starting vector
            a, b = a[..., [0, -1]], b[..., [0, -1]]
        compare(f"spectrum {key}", a, b, 5e-3)
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    print("mismatches:", failures or "none")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
