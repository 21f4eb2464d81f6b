"""Parity figures of the TensorFlow backend against the torch backend: the largest relative differences.

The same weights and eval-mode batch-norm statistics in both frameworks (``tests/test_tf_parity.py`` builds the pairs,
30 digits samples in batches of 7), per model and dtype: loss, gradient, HVP (largest of 3 random vectors), top-3
Ritz values (30 Lanczos steps, float64 only) and a 3x3 landscape grid. ``--full-width`` adds ResNet-20 at width 16
(272,186 parameters; about half a minute on 2 cores). The tests assert the issue's bounds; this prints the figures.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/tf_parity_figures.py [--full-width]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-width", action="store_true", help="also ResNet-20 at width 16")
    args = parser.parse_args(argv)
    import numpy as np
    import test_tf_parity as parity
    import torch

    from gradvis_steps.core.grid import evaluate_points
    from gradvis_steps.core.lanczos import ritz_pairs
    from gradvis_steps.core.slq import starting_vector
    from gradvis_steps.data import load_dataset

    torch.set_num_threads(2)
    if args.full_width:
        parity.MODELS["resnet20-w16"] = {"name": "resnet20"}
    digits = load_dataset("digits")
    print(f"{'model':13s} {'dtype':8s} {'dim':>7s} {'loss':>8s} {'grad':>8s} {'hvp':>8s} {'ritz':>8s} {'grid':>8s}")
    for name in parity.MODELS:
        for dtype in ("float32", "float64"):
            pair = parity.make_pair(name, dtype, digits)
            theta, tf_theta = pair.theta, pair.tf.from_numpy(pair.convert(pair.theta))
            torch_theta = pair.torch.from_numpy(theta)
            loss = abs(pair.tf.loss(tf_theta) / pair.torch.loss(torch_theta) - 1)
            expected = pair.convert(pair.torch.to_numpy(pair.torch.grad(torch_theta)).astype(np.float64))
            grad = parity._relative(pair.tf.grad(tf_theta).astype(np.float64), expected)
            hvp = 0.0
            for seed in range(3):
                v = np.random.default_rng(seed).standard_normal(len(theta))
                expected = pair.torch.to_numpy(pair.torch.hvp(torch_theta, pair.torch.from_numpy(v)))
                got = pair.tf.hvp(tf_theta, pair.tf.from_numpy(pair.convert(v)))
                hvp = max(hvp, parity._relative(got.astype(np.float64), pair.convert(expected).astype(np.float64)))
            ritz = float("nan")
            if dtype == "float64":
                v0, m = starting_vector(len(theta), seed=3, index=0), min(30, len(theta))
                want = ritz_pairs(pair.torch.hvp_operator(torch_theta), pair.torch.from_numpy(v0), m, 3).values
                have = ritz_pairs(pair.tf.hvp_operator(tf_theta), pair.tf.from_numpy(pair.convert(v0)), m, 3).values
                ritz = float(np.max(np.abs(have - want) / np.abs(want)))
            directions = 0.1 * np.random.default_rng(2).standard_normal((2, len(theta)))
            axis = np.linspace(-1, 1, 3)
            points = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
            want = evaluate_points(pair.torch, theta, directions, points, progress=False).loss
            have = evaluate_points(pair.tf, pair.convert(theta), np.stack([pair.convert(d) for d in directions]),
                                   points, progress=False).loss
            grid = float(np.max(np.abs(have - want) / np.abs(want)))
            print(f"{name:13s} {dtype:8s} {len(theta):7d} {loss:8.1e} {grad:8.1e} {hvp:8.1e} {ritz:8.1e} {grid:8.1e}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
