"""Training with torch's SGD (+ momentum), Adam or AdamW on a learning-rate schedule, and a checkpoint of the flat
parameters every k iterations."""

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


#: per optimizer, the per-parameter state torch keeps (flat vectors over the layout in the resume state; ``step``: one
#: count per tensor) and its name in the resume state (SGD's as it always was)
_STATE = {"sgd": {"momentum_buffer": "momentum"},
          "adam": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "adam_step"}}
_STATE["adamw"] = _STATE["adam"]


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """torch's SGD, Adam or AdamW over the model's parameters, as ``settings`` say (the lr is set at each step)."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    kind = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    return kind(model.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2), eps=settings.eps,
                weight_decay=settings.weight_decay)


def optimizer_vectors(optimizer: torch.optim.Optimizer, model: nn.Module, layout: Any,
                      settings: TrainSettings) -> dict[str, np.ndarray]:
    """The optimizer's per-parameter state for the resume state: each tensor kind as one flat float64 vector over
    the layout (exact for float32 and float64 parameters; zeros where torch holds none yet), step counts as one
    number per tensor."""
    params = dict(model.named_parameters())
    out = {}
    for key, name in _STATE[settings.optimizer].items():
        parts = []
        for spec in layout:
            value = optimizer.state.get(params[spec.name], {}).get(key)
            if key == "step":
                parts.append(np.array([0.0 if value is None else float(value)]))
            else:
                parts.append(np.zeros(spec.numel) if value is None
                             else value.detach().cpu().double().reshape(-1).numpy())
        out[name] = np.concatenate(parts) if parts else np.zeros(0)
    return out


def restore_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, layout: Any, settings: TrainSettings,
                      state: dict[str, Any]) -> None:
    """Put the state :func:`optimizer_vectors` saved back into ``optimizer`` through its ``load_state_dict`` (which
    gives each tensor its parameter's dtype and device, and keeps step counts as torch keeps them)."""
    params = dict(model.named_parameters())
    index = {id(p): i for i, p in enumerate(model.parameters())}
    saved = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for position, spec in enumerate(layout):
        p = params[spec.name]
        entry = per_param.setdefault(index[id(p)], {})
        for key, name in _STATE[settings.optimizer].items():
            flat = np.asarray(state[name])
            if key == "step":
                # torch's own dtype for step counts (float32, float64 where that is the default dtype)
                entry[key] = torch.tensor(float(flat[position]), dtype=_step_dtype())
            else:
                entry[key] = torch.as_tensor(flat[spec.slice]).to(p).view(spec.shape).clone()
    saved["state"] = per_param
    optimizer.load_state_dict(saved)


def _step_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def train(model: nn.Module, dataset: ArrayDataset, settings: TrainSettings, writer: TrajectoryWriter,
          device: torch.device | str = "cpu", progress: bool = True,
          loss: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on the dataset's training split with torch's SGD, Adam or AdamW, the learning rate of each
    step from the schedule, on the mean of the run's ``loss`` over each batch (a spec of :mod:`gradvis_steps.losses`;
    None: cross-entropy), appending checkpoints to ``writer`` (the loop, its checkpoints, resume and divergence
    check: :func:`~...core.training.run_training`)."""
    device = torch.device(device)
    model.to(device)
    model.train()
    layout = layout_of(model)
    optimizer = make_optimizer(model, settings)
    x = torch.as_tensor(dataset.x_train).to(device)
    criterion = TorchLoss(loss)
    y = criterion.targets(dataset.y_train, device, x.dtype)

    def snapshot() -> tuple[np.ndarray, np.ndarray]:
        return flatten_parameters(model, layout).cpu().float().numpy(), flatten_buffers(model)

    def step(batch: torch.Tensor, lr: float) -> float:
        batch_loss = criterion.mean(model(x[batch]), y[batch])
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        return float(batch_loss.detach())

    def optimizer_state() -> dict[str, np.ndarray]:
        return {**optimizer_vectors(optimizer, model, layout, settings), "torch_rng": torch.get_rng_state().numpy()}

    def restore(state: dict[str, Any]) -> None:
        load_flat_parameters(model, torch.as_tensor(state["params"]), layout)
        restored = unflatten_buffers(state["buffers"], buffer_layout(model))
        for name, buf in model.named_buffers():
            buf.copy_(restored[name].to(buf))
        restore_optimizer(optimizer, model, layout, settings, state)
        torch.set_rng_state(torch.as_tensor(state["torch_rng"], dtype=torch.uint8))

    return run_training(settings, len(x), writer, snapshot=snapshot,
                        order=lambda epoch: epoch_permutation(len(x), settings.seed, epoch).to(device), step=step,
                        optimizer_state=optimizer_state, restore=restore, progress=progress)
