"""Training with SGD + momentum and a checkpoint of the flat parameters every k iterations."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...core.training import DivergenceGuard, TrainSettings
from ...data.base import ArrayDataset
from ...storage.trajectory import TrajectoryWriter
from .flat import (
    buffer_layout,
    flatten_buffers,
    flatten_parameters,
    layout_of,
    load_flat_parameters,
    unflatten_buffers,
)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Sample order of one epoch; depends only on (seed, epoch) so a resumed run sees the same order."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(n, generator=generator)


def _momentum_vector(optimizer: torch.optim.SGD, model: nn.Module, layout: Any) -> np.ndarray:
    params = dict(model.named_parameters())
    parts = []
    for spec in layout:
        state = optimizer.state.get(params[spec.name], {})
        buf = state.get("momentum_buffer")
        parts.append(np.zeros(spec.numel) if buf is None else buf.detach().cpu().double().reshape(-1).numpy())
    return np.concatenate(parts) if parts else np.zeros(0)


def _restore_momentum(optimizer: torch.optim.SGD, model: nn.Module, layout: Any, flat: np.ndarray) -> None:
    params = dict(model.named_parameters())
    for spec in layout:
        p = params[spec.name]
        optimizer.state[p]["momentum_buffer"] = torch.as_tensor(flat[spec.slice]).to(p).view(spec.shape).clone()


def train(model: nn.Module, dataset: ArrayDataset, settings: TrainSettings, writer: TrajectoryWriter,
          device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train ``model`` on the dataset's training split, appending checkpoints to ``writer``.

    Checkpoint t holds the parameters after t optimizer steps (t = 0 is the initial point; the final
    point is always stored) with ``batch_loss`` = loss of the mini-batch the step from t used (NaN for
    the final point, from which no step is taken). If ``writer`` holds resume state (an interrupted
    run), training continues from that epoch boundary and reproduces the uninterrupted run. A point with a
    non-finite batch loss or parameters raises :class:`~...core.training.TrainingDiverged` before it is stored.
    """
    device = torch.device(device)
    model.to(device)
    layout = layout_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    x = torch.as_tensor(dataset.x_train).to(device)
    y = torch.as_tensor(dataset.y_train).to(device=device, dtype=torch.long)
    n = len(x)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if settings.max_iterations is not None:
        total = min(total, settings.max_iterations)

    iteration, start_epoch = 0, 0
    guard = DivergenceGuard(settings)
    state = writer.resume_state()
    if state is not None:
        guard.restore(state)
        load_flat_parameters(model, torch.as_tensor(state["params"]), layout)
        restored = unflatten_buffers(state["buffers"], buffer_layout(model))
        for name, buf in model.named_buffers():
            buf.copy_(restored[name].to(buf))
        _restore_momentum(optimizer, model, layout, state["momentum"])
        torch.set_rng_state(torch.as_tensor(state["torch_rng"], dtype=torch.uint8))
        iteration, start_epoch = int(state["iteration"]), int(state["next_epoch"])
        writer.truncate(int(state["n_checkpoints"]))
        print(f"resuming at iteration {iteration} (epoch {start_epoch + 1} of {settings.epochs}) from "
              f"{int(state['n_checkpoints'])} checkpoints", file=sys.stderr)
    elif len(writer):
        writer.truncate(0)

    def snapshot() -> tuple[np.ndarray, np.ndarray]:
        return flatten_parameters(model, layout).cpu().float().numpy(), flatten_buffers(model)

    bar = tqdm(total=total, initial=iteration, disable=not progress, desc="train", unit="it", mininterval=1.0)
    last_loss = float("nan")
    for epoch in range(start_epoch, settings.epochs):
        if iteration >= total:
            break
        order = epoch_permutation(n, settings.seed, epoch).to(device)
        model.train()
        for start in range(0, n, settings.batch_size):
            if iteration >= total:
                break
            params, buffers = snapshot()  # theta_t before the forward pass updates BN statistics
            batch = order[start:start + settings.batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last_loss = float(loss.detach())
            guard.check(params, buffers, last_loss, iteration=iteration, epoch=epoch, stored=len(writer))
            if iteration % settings.checkpoint_every == 0:
                writer.append(params, buffers, iteration=iteration, epoch=epoch, batch_loss=last_loss)
            iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
        params, buffers = snapshot()
        writer.save_resume_state({
            "params": params, "buffers": buffers, "momentum": _momentum_vector(optimizer, model, layout),
            "torch_rng": torch.get_rng_state().numpy(), "iteration": iteration, "next_epoch": epoch + 1,
            "n_checkpoints": len(writer), **guard.resume_state(),
        })
    bar.close()
    params, buffers = snapshot()
    final_epoch = (iteration - 1) // steps_per_epoch if iteration else 0
    guard.check(params, buffers, None, iteration=iteration, epoch=final_epoch, stored=len(writer))
    writer.append(params, buffers, iteration=iteration, epoch=final_epoch, batch_loss=float("nan"))
    return {"iterations": iteration, "checkpoints": len(writer), "last_batch_loss": last_loss,
            "steps_per_epoch": steps_per_epoch}

