"""Analyse your own training run: a small network trained in its own PyTorch loop (Adam, cosine schedule with
warm-up), recorded with gradvis, then the whole gradvis workflow (directions, landscapes, Hessian spectra, video,
report) run on it.

    python examples/own_loop.py --workdir own_run          # then open own_run/results/report.html

The model and the data are this file's own functions (``net``, ``load``); the recorder stores them as entry points
(``own_loop:net``, ``own_loop:load``), so every analysis rebuilds the same model on the same data. Only this file's
folder must be importable where the analyses run: the script puts it on PYTHONPATH for ``gradvis run``.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent


def net(input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> nn.Module:
    """The model: a two-layer perceptron for the flattened input (called by the analyses too)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.Tanh(),
                         nn.Linear(hidden, num_classes))


def load() -> dict[str, np.ndarray]:
    """The data: scikit-learn's 8x8 handwritten digits scaled to [0, 1], a fixed train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1500], order[1500:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test], "num_classes": 10}


def train_and_record(trajectory: Path, epochs: int, seed: int = 0) -> None:
    """The user's own loop, with three recorder lines added."""
    from gradvis_steps.record import Recorder

    torch.manual_seed(seed)
    data = load()
    x, y = torch.as_tensor(data["x_train"]), torch.as_tensor(data["y_train"])
    model = net(tuple(x.shape[1:]), 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps_per_epoch, batch = math.ceil(len(x) / 64), 64
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to zero
        optimizer, lambda t: (t + 1) / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) /
                                                                                        (total - warmup))))
    with Recorder(trajectory, model, model_spec="own_loop:net", dataset_spec="own_loop:load",
                  loss="cross_entropy", optimizer=optimizer) as recorder:
        step = 0
        for epoch in range(epochs):
            for indices in torch.randperm(len(x)).split(batch):
                recorder.record(step, epoch=epoch)  # the parameters after `step` optimizer steps
                loss = F.cross_entropy(model(x[indices]), y[indices])
                recorder.batch_loss(loss.item())  # the loss of the batch the step from that point uses
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
        recorder.record(step, force=True)  # the final point
    print(f"recorded {step + 1} checkpoints to {trajectory}", file=sys.stderr)


CONFIG = """\
# The run recorded by examples/own_loop.py, analysed by the whole workflow (merged over gradvis's default config).
device: cpu
external_runs:
  mine:
    trajectory: runs/mine/trajectory.h5   # model, dataset and loss come from the file
evaluation: {{fraction: 0.2, batch_size: 1024}}
directions:
  methods: [pca, hessian]
  hessian: {{count: 2, steps: 12}}
landscape: {{resolution: {resolution}}}
spectra: {{every: {every}, k: 2, m: 12, chunks: 1}}
frames: {{direction: pca, fps: 4, dpi: 50}}
experiments:
  mine:
    description: A two-layer perceptron trained in its own loop with Adam and a cosine schedule.
    runs: [mine]                          # no `trained`: gradvis trains nothing
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("own_run"), help="the project folder to create")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=11, help="landscape grid points per axis")
    parser.add_argument("--every", type=int, default=8, help="Hessian spectrum at every k-th checkpoint")
    parser.add_argument("--cores", default="2")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))  # the recorder builds `own_loop:net` to check it is the model being trained
    train_and_record(workdir / "runs" / "mine" / "trajectory.h5", args.epochs)
    (workdir / "config" / "config.yaml").write_text(CONFIG.format(resolution=args.resolution, every=args.every))

    # The installation's `gradvis` command (beside this interpreter) runs the packaged workflow in the folder.
    gradvis = Path(sys.executable).with_name("gradvis")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    for command in (["run", "--cores", args.cores], ["report"]):
        status = subprocess.run([str(gradvis), *command], cwd=workdir, env=env).returncode
        if status:
            return status
    print(f"results in {workdir / 'results'}, report {workdir / 'results' / 'report.html'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
