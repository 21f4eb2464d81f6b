"""PyTorch backend: models, flat parameters, the Objective (loss/grad/HVP) and training.

Steps reach it through the registry (:func:`gradvis_steps.backends.backend`), which imports this package at the
first request for ``"torch"`` and takes :data:`BACKEND`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.objective import HVP_MEMORY_MB
from ...core.parallel import MPIComm, SerialComm, local_rank
from ...data import ArrayDataset, load_dataset
from ...losses import loss_of
from ...storage.trajectory import Trajectory
from ..base import Backend
from .checkpoint_files import load_checkpoint
from .flat import buffer_layout, flatten_parameters, layout_of
from .lanczos_graphs import clear_lanczos_graphs, set_cuda_graphs  # registers the CUDA-graph Lanczos loop
from .models import build_model
from .objective import TorchObjective
from .recorder import Recorder, describe_optimizer
from .reduction import BatchReduction
from .training import train

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str | None) -> torch.device:
    """``auto`` picks the GPU when there is one; anything else must be a valid torch device string. ``auto`` and a
    bare ``cuda`` bind one GPU per MPI rank: ``cuda:(local rank % visible GPUs)``, so the ranks of a node spread
    over its GPUs (several ranks share one when there are more ranks than GPUs); ``cuda:N`` is taken as given."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device (use auto, cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here (use auto or cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def model_for(config: dict[str, Any], dataset: ArrayDataset) -> torch.nn.Module:
    """Build (and seed) the model a run config names, for the given dataset's input shape."""
    torch.manual_seed(int(config.get("train", {}).get("seed", 0)))
    return build_model(config["model"], dataset.input_shape, dataset.num_classes)


def objective_for_trajectory(
    trajectory: Trajectory,
    *,
    fraction: float = 0.2,
    subset_seed: int = 0,
    batch_size: int = 1024,
    device: str | None = "auto",
    dtype: str = "float32",
    buffers_from: int = -1,
    dataset: ArrayDataset | None = None,
    hvp_memory_mb: float = HVP_MEMORY_MB,
    grid_batching: str = "auto",
    hvp_mode: str = "auto",
    data_comm: SerialComm | MPIComm | None = None,
) -> TorchObjective:
    """The objective of a trained run: its model, data and loss (the run config's ``loss``, cross-entropy where it
    has none), evaluated on the deterministic subset.

    Batch-norm running statistics are taken from checkpoint ``buffers_from`` (default: the last one,
    the centre of landscapes and the point the paper analyses). ``grid_batching`` ("auto" | "vmap" | "per_point")
    picks how ``evaluate_many`` runs many points (:mod:`.batched_points`), ``hvp_mode`` how Hessian-vector products
    are taken (``"auto"``: resolved by :meth:`TorchObjective.calibrate_hvp`), ``data_comm`` the data-parallel group
    whose ranks each keep a shard of the evaluation batches (paper Algorithm 4; None: this rank holds them all).
    """
    config = trajectory.config
    dataset = dataset if dataset is not None else load_dataset(config["dataset"])
    model = model_for(config, dataset)
    x, y = dataset.evaluation_subset(fraction, subset_seed)
    objective = TorchObjective(model, x, y, batch_size=batch_size, device=resolve_device(device),
                               dtype=resolve_dtype(dtype), hvp_memory_mb=hvp_memory_mb,
                               grid_batching=grid_batching, hvp_mode=hvp_mode, data_comm=data_comm,
                               loss=loss_of(config))
    if objective.layout != trajectory.layout:
        raise ValueError(f"{trajectory.path}: stored parameter layout does not match the model its config builds")
    if trajectory.buffer_layout:
        objective.set_buffers(np.asarray(trajectory.buffers(buffers_from)), trajectory.buffer_layout)
    return objective


def objective_for_model(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    loss: dict | str | None = None,
    batch_size: int = 1024,
    device: str | None = None,
    dtype: str | None = None,
    hvp_memory_mb: float | str = HVP_MEMORY_MB,
    hvp_mode: str = "auto",
    grid_batching: str = "auto",
) -> TorchObjective:
    """A user's ``nn.Module`` (copied, never changed; evaluation mode) on the user's arrays: the objective the Python
    API computes with. ``device`` None: where the model's parameters are; ``dtype`` None: theirs."""
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError(f"model {type(model).__name__} has no parameters: nothing to differentiate")
    return TorchObjective(model, x, y, batch_size=batch_size,
                          device=first.device if device is None else resolve_device(device),
                          dtype=first.dtype if dtype is None else resolve_dtype(dtype), hvp_memory_mb=hvp_memory_mb,
                          hvp_mode=hvp_mode, grid_batching=grid_batching, loss=loss)


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    """The model's trainable parameters as one flat host array (layout order, their own dtype)."""
    return flatten_parameters(model).detach().cpu().numpy()


#: what the steps use of this backend (:class:`gradvis_steps.backends.Backend`)
BACKEND = Backend(
    name="torch",
    resolve_device=resolve_device,
    objective_for_trajectory=objective_for_trajectory,
    build_model=model_for,
    parameter_layout=layout_of,
    buffer_layout=buffer_layout,
    train=train,
    load_checkpoint=load_checkpoint,
    recording={"Recorder": Recorder, "describe_optimizer": describe_optimizer},
    objective_for_model=objective_for_model,
    flat_parameters=flat_parameters,
)

__all__ = [
    "BACKEND",
    "BatchReduction",
    "TorchObjective",
    "build_model",
    "clear_lanczos_graphs",
    "model_for",
    "objective_for_trajectory",
    "resolve_device",
    "resolve_dtype",
    "set_cuda_graphs",
]
