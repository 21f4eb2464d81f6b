"""A tour of gradvis's Python API: the Hessian and the loss landscape of your own PyTorch model, in a notebook's
few lines (run it as a script, or paste its cells into a notebook).

    python examples/api_tour.py --out api_tour      # writes spectrum.h5, density.png, landscape.h5, landscape.png

A small perceptron is trained for a moment on scikit-learn's 8x8 digits; then the API computes the top Hessian
eigenvalues (with their residuals), Hutchinson's trace, the SLQ spectral density and a 2-D loss landscape along
two filter-normalized random directions, and saves each in the format the workflow's steps write (so
``python -m gradvis_steps.plot_spectra`` and ``compare`` read them). Under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradvis_steps.api import directions, hessian, landscape


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits scaled to [0, 1] and flattened, split 1500 / 297 (training / evaluation)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images.reshape(len(data.images), -1) / 16.0, dtype=torch.float32)
    y = torch.as_tensor(data.target, dtype=torch.int64)
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(x)))
    train, held = order[:1500], order[1500:]
    return x[train], y[train], x[held], y[held]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("api_tour"), help="folder for the files and figures")
    parser.add_argument("--steps", type=int, default=150, help="full-batch Adam steps of the short training")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # %% Your model and data: any nn.Module, any tensors (a Keras model works alike).
    torch.manual_seed(0)
    x, y, x_eval, y_eval = digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(args.steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    # %% The Hessian of the mean cross-entropy over the evaluation data, at the trained parameters.
    h = hessian(model, (x_eval, y_eval), "cross_entropy")
    top = h.eigenvalues(top=3)
    print("top eigenvalues:", np.array2string(top.values, precision=4),
          "residuals:", np.array2string(top.residuals, precision=1))
    trace = h.trace()
    print(f"trace (Hutchinson, {trace.samples} vectors): {trace.estimate:.4g} ± {trace.stderr:.2g}")

    # %% The SLQ spectral density: raw nodes and weights, the smoothed density, a figure, the spectrum step's file.
    density = h.density()
    print(f"density: {density.nodes.shape[0]} x {density.nodes.shape[1]} nodes, "
          f"negative mass {density.summary['negative_mass']:.3f}")
    density.save(args.out / "spectrum.h5")
    density.plot().savefig(args.out / "density.png", dpi=80)

    # %% Data as batches works too (a DataLoader, a list of (x, y)): concatenated, batch size the first batch's.
    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_eval, y_eval), batch_size=100)
    same = hessian(model, batches, "cross_entropy").eigenvalues(top=1)
    print(f"from batches of 100: top eigenvalue {same.values[0]:.4g}")

    # %% A 2-D loss landscape along two filter-normalized random directions through the trained parameters.
    plane = directions.random(model, seed=0)
    surface = landscape(model, (x_eval, y_eval), "cross_entropy", plane, resolution=11, range=(-1, 1, -1, 1))
    print(f"landscape: loss {surface.loss.min():.3g} .. {surface.loss.max():.3g} on a {surface.shape} grid")
    surface.save(args.out / "landscape.h5")
    surface.plot(log_levels=True).savefig(args.out / "landscape.png", dpi=80)
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
