"""Training with SGD + momentum and a checkpoint of the flat parameters every k iterations."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.training import TrainSettings, run_training
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
from .losses import TorchLoss


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
          device: torch.device | str = "cpu", progress: bool = True,
          loss: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on the dataset's training split with torch's SGD, appending checkpoints to ``writer``
    (the loop, its checkpoints, resume and divergence check: :func:`~...core.training.run_training`), on the mean
    of the run's ``loss`` over each batch (a spec of :mod:`gradvis_steps.losses`; None: cross-entropy)."""
    device = torch.device(device)
    model.to(device)
    model.train()
    layout = layout_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    x = torch.as_tensor(dataset.x_train).to(device)
    criterion = TorchLoss(loss)
    y = criterion.targets(dataset.y_train, device, x.dtype)

    def snapshot() -> tuple[np.ndarray, np.ndarray]:
        return flatten_parameters(model, layout).cpu().float().numpy(), flatten_buffers(model)

    def step(batch: torch.Tensor) -> float:
        batch_loss = criterion.mean(model(x[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        return float(batch_loss.detach())

    def optimizer_state() -> dict[str, np.ndarray]:
        return {"momentum": _momentum_vector(optimizer, model, layout), "torch_rng": torch.get_rng_state().numpy()}

    def restore(state: dict[str, Any]) -> None:
        load_flat_parameters(model, torch.as_tensor(state["params"]), layout)
        restored = unflatten_buffers(state["buffers"], buffer_layout(model))
        for name, buf in model.named_buffers():
            buf.copy_(restored[name].to(buf))
        _restore_momentum(optimizer, model, layout, state["momentum"])
        torch.set_rng_state(torch.as_tensor(state["torch_rng"], dtype=torch.uint8))

    return run_training(settings, len(x), writer, snapshot=snapshot,
                        order=lambda epoch: epoch_permutation(len(x), settings.seed, epoch).to(device), step=step,
                        optimizer_state=optimizer_state, restore=restore, progress=progress)
