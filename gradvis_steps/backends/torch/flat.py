"""Flat parameter vectors <-> a torch module's parameters, and the module's ParameterLayout."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from ...core.layout import ParameterLayout

_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)
_OTHER_NORM = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _kind(module: nn.Module, param_name: str) -> tuple[str, int | None]:
    """Kind and filter axis of ``module.<param_name>`` (torch weights keep output units on axis 0)."""
    if isinstance(module, _BATCHNORM):
        return "batchnorm", None
    if isinstance(module, _OTHER_NORM) or isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "norm", None
    if param_name == "bias":
        return "bias", None
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and param_name == "weight":
        return "conv", 1  # transposed convs store (in, out, *k)
    if isinstance(module, nn.modules.conv._ConvNd) and param_name == "weight":
        return "conv", 0
    if isinstance(module, nn.Linear) and param_name == "weight":
        return "linear", 0
    return "other", None


def layout_of(model: nn.Module) -> ParameterLayout:
    """The layout of the model's trainable parameters in ``named_parameters()`` order."""
    entries = []
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            kind, axis = _kind(module, param_name)
            full = f"{module_name}.{param_name}" if module_name else param_name
            entries.append((full, tuple(param.shape), kind, axis))
    order = {name: i for i, (name, p) in enumerate(model.named_parameters())}
    entries.sort(key=lambda e: order[e[0]])
    return ParameterLayout.from_shapes(entries)


def unflatten(theta: torch.Tensor, layout: ParameterLayout) -> dict[str, torch.Tensor]:
    """Views of ``theta`` shaped as the model's parameters (no copies; gradients flow to ``theta``)."""
    if theta.ndim != 1 or theta.numel() != layout.size:
        raise ValueError(f"flat vector has shape {tuple(theta.shape)}, expected ({layout.size},)")
    return {spec.name: theta[spec.slice].view(spec.shape) for spec in layout}


def as_flat_vector(x: torch.Tensor | np.ndarray, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a flat vector of ``dim`` entries on ``device`` in ``dtype`` (a host array is copied over); a
    ValueError if its shape is not ``(dim,)``."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x)).to(device=device, dtype=dtype)
    if x.shape != (dim,):
        raise ValueError(f"flat vector has shape {tuple(x.shape)}, expected ({dim},)")
    return x.to(device=device, dtype=dtype)


def flatten_parameters(model: nn.Module, layout: ParameterLayout | None = None) -> torch.Tensor:
    """Copy the model's trainable parameters into one new flat tensor (detached)."""
    layout = layout or layout_of(model)
    params = dict(model.named_parameters())
    return torch.cat([params[spec.name].detach().reshape(-1) for spec in layout])


def load_flat_parameters(model: nn.Module, theta: torch.Tensor, layout: ParameterLayout | None = None) -> None:
    """Write a flat vector into the model's parameters in place (the inverse of flatten_parameters)."""
    layout = layout or layout_of(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, view in unflatten(theta.to(next(iter(params.values())).device), layout).items():
            params[name].copy_(view)


def buffer_layout(model: nn.Module) -> list[dict]:
    """Names, shapes and dtypes of the model's buffers (batch-norm running statistics)."""
    return [
        {"name": name, "shape": list(buf.shape), "dtype": str(buf.dtype).removeprefix("torch.")}
        for name, buf in model.named_buffers()
    ]


def flatten_buffers(model: nn.Module) -> np.ndarray:
    """All buffers as one float64 host vector (integer counters are exact in float64)."""
    buffers = [buf.detach().reshape(-1).to("cpu", torch.float64) for _, buf in model.named_buffers()]
    return torch.cat(buffers).numpy() if buffers else np.zeros(0)


def unflatten_buffers(flat: np.ndarray, layout: list[dict] | str, device: torch.device | str = "cpu",
                      float_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Inverse of flatten_buffers; float buffers optionally cast to ``float_dtype``."""
    layout = json.loads(layout) if isinstance(layout, str) else layout
    out, offset = {}, 0
    for entry in layout:
        count = int(np.prod(entry["shape"], dtype=np.int64))
        dtype = getattr(torch, entry["dtype"])
        if float_dtype is not None and dtype.is_floating_point:
            dtype = float_dtype
        values = torch.as_tensor(np.asarray(flat[offset:offset + count]).reshape(entry["shape"]))
        out[entry["name"]] = values.to(device=device, dtype=dtype)
        offset += count
    if offset != len(flat):
        raise ValueError(f"buffer vector has {len(flat)} entries, layout describes {offset}")
    return out
