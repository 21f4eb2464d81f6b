"""TensorFlow backend (Keras 3 models): flat parameters, the Objective (loss/grad/HVP) and training.

The only package besides the torch backend that imports a deep-learning framework. Steps reach it through the
registry (:func:`gradvis_steps.backends.backend` with ``"tensorflow"``, or a trajectory whose run config records
``framework: tensorflow``), which imports it at the first request and takes :data:`BACKEND`. Importing it sets
``KERAS_BACKEND=tensorflow`` and ``TF_CPP_MIN_LOG_LEVEL=2`` unless they are set already, and refuses a Keras that
runs on another framework.
"""

from __future__ import annotations

import os
import re
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"Keras runs on {keras.backend.backend()!r} (KERAS_BACKEND): the tensorflow backend needs Keras "
                      "on TensorFlow; unset KERAS_BACKEND or set it to 'tensorflow'")

from ...data import ArrayDataset, load_dataset  # noqa: E402
from ...losses import loss_of  # noqa: E402
from ...storage.trajectory import Trajectory  # noqa: E402
from ..base import Backend  # noqa: E402
from .checkpoint_files import load_checkpoint  # noqa: E402
from .flat import assign_like, buffer_layout, flatten_parameters, layout_of  # noqa: E402
from .models import build_model, dtype_policy, inputs_in  # noqa: E402
from .objective import DTYPES, HVP_MODE_CHOICES, TFHessianOperator, TFObjective, channels_last  # noqa: E402
from .recorder import BatchLoss, KerasRecorder  # noqa: E402
from .training import train  # noqa: E402

_DEVICE = re.compile(r"^(cpu|gpu|cuda)(?::(\d+))?$")


def resolve_device(name: str | None) -> str:
    """``auto`` (or None) picks the first GPU when TensorFlow sees one, else the CPU; ``cpu``, ``gpu``, ``gpu:N``,
    ``cuda``/``cuda:N`` (the torch spellings) or a TensorFlow device string (``/GPU:0``) name one: ``"/CPU:0"``..."""
    gpus = tf.config.list_physical_devices("GPU")
    if name in (None, "auto"):
        return "/GPU:0" if gpus else "/CPU:0"
    match = _DEVICE.match(str(name).lower())
    if match is None:
        try:
            spec = tf.DeviceSpec.from_string(str(name))
        except ValueError:
            spec = None
        if spec is None or spec.device_type is None or spec.device_type.lower() not in ("cpu", "gpu"):
            raise ValueError(f"device {name!r} is not a TensorFlow device (use auto, cpu, gpu, gpu:0, /GPU:0, ...)")
        kind, index = spec.device_type.lower(), spec.device_index or 0
    else:
        kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cpu":
        return "/CPU:0"
    if index >= len(gpus):
        raise ValueError(f"device {name!r} requested but TensorFlow sees {len(gpus)} GPU(s) here (use auto or cpu)")
    return f"/GPU:{index}"


def model_for(config: dict[str, Any], dataset: ArrayDataset, dtype: str = "float32") -> keras.Model:
    """Build (and seed) the model a run config names, for the dataset's input shape. The weights are drawn in float32
    (as training uses them); another ``dtype`` gets a copy built under that dtype policy holding the same values, whose
    inputs are in that dtype too (:func:`~.models.inputs_in`: a float32 ``Input`` would round float64 data)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    keras.utils.set_random_seed(int(config.get("train", {}).get("seed", 0)))
    with dtype_policy("float32"):
        model = build_model(config["model"], dataset.input_shape, dataset.num_classes)
    if dtype == "float32":
        return model
    with dtype_policy(dtype):
        copy = inputs_in(build_model(config["model"], dataset.input_shape, dataset.num_classes), dtype)
    assign_like(copy, model)
    return copy


def _same_but_names(a: Any, b: Any) -> bool:
    """Whether two layouts differ at most in their names (automatic Keras layer names of custom models)."""
    fields = [(s.shape, s.kind, s.offset, s.filter_axis) for s in a]
    return len(a) == len(b) and fields == [(s.shape, s.kind, s.offset, s.filter_axis) for s in b]


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
    hvp_memory_mb: float | None = None,
    grid_batching: str = "auto",
    hvp_mode: str = "auto",
    data_comm: Any = None,
) -> TFObjective:
    """The objective of a trained run: its Keras model, data and loss (the run config's ``loss``; cross-entropy where
    it has none), evaluated on the deterministic subset.

    Batch-norm moving statistics are taken from checkpoint ``buffers_from`` (default: the last one). ``hvp_mode`` is
    one of :data:`~.objective.HVP_MODE_CHOICES`; ``hvp_memory_mb`` and ``grid_batching`` are accepted for the steps'
    sake and not used (this backend keeps no gradient graphs and evaluates grid points one by one). ``data_comm``:
    a communicator of more than one rank asks for data-parallel products (Algorithm 4), which this backend does not
    do yet; it runs iteration-parallel MPI jobs only."""
    if data_comm is not None and data_comm.size > 1:
        raise ValueError(f"the tensorflow backend does not shard Hessian products over ranks yet (a data-parallel "
                         f"group of {data_comm.size} ranks was asked for: --parallel data/hybrid, or eigendirections "
                         "under mpiexec); use --parallel iteration (spectra.parallel: iteration, "
                         "directions.hessian.mpi_tasks: 1)")
    if hvp_mode not in HVP_MODE_CHOICES:
        raise ValueError(f"hvp_mode {hvp_mode!r} is not one of {HVP_MODE_CHOICES}")
    config = trajectory.config
    dataset = dataset if dataset is not None else load_dataset(config["dataset"])
    device_name = resolve_device(device)
    with tf.device(device_name):
        model = model_for(config, dataset, dtype)
    x, y = dataset.evaluation_subset(fraction, subset_seed)
    objective = TFObjective(model, x, y, batch_size=batch_size, device=device_name, dtype=dtype, hvp_mode=hvp_mode,
                            loss=loss_of(config))
    if objective.layout != trajectory.layout:
        if not _same_but_names(objective.layout, trajectory.layout):
            raise ValueError(f"{trajectory.path}: stored parameter layout does not match the model its config builds")
        objective.layout = trajectory.layout  # the same tensors under the names the run recorded
    if trajectory.buffer_layout:
        objective.set_buffers(np.asarray(trajectory.buffers(buffers_from)), _renamed(trajectory, model))
    return objective


def _renamed(trajectory: Trajectory, model: keras.Model) -> list[dict]:
    """The trajectory's buffer layout under the model's own variable paths (matched by position)."""
    own = buffer_layout(model)
    stored = trajectory.buffer_layout
    if [e["shape"] for e in own] != [e["shape"] for e in stored]:
        raise ValueError(f"{trajectory.path}: stored buffer layout does not match the model its config builds")
    return [{**entry, "name": mine["name"]} for entry, mine in zip(stored, own, strict=True)]


def objective_for_model(model: keras.Model, x: np.ndarray, y: np.ndarray, *, loss: dict | str | None = None,
                        batch_size: int = 1024, device: str | None = None, dtype: str | None = None,
                        hvp_memory_mb: float | str | None = None, hvp_mode: str = "auto",
                        grid_batching: str = "auto") -> TFObjective:
    """A user's Keras model (never changed) on the user's arrays: the objective the Python API computes with. ``x`` is
    in the model's own layout (images channels-last, as Keras takes them); ``dtype`` None: the model's variables'
    (another dtype needs a model built under that dtype policy, :func:`model_for`). ``hvp_memory_mb`` and
    ``grid_batching`` are accepted as in :func:`objective_for_trajectory` and not used."""
    x = np.asarray(x)
    if dtype is None:
        floats = [str(v.dtype) for v in model.trainable_variables if "float" in str(v.dtype)]
        dtype = floats[0] if floats else "float32"
    # TFObjective takes images in the framework-neutral layout (N, C, H, W) and moves the channels last itself
    neutral = np.moveaxis(x, -1, 1) if x.ndim == 4 else x
    with tf.device(resolve_device(device)):
        return TFObjective(model, neutral, y, batch_size=batch_size, device=resolve_device(device), dtype=dtype,
                           hvp_mode=hvp_mode, loss=loss)


#: what the steps use of this backend (:class:`gradvis_steps.backends.Backend`)
BACKEND = Backend(
    name="tensorflow",
    resolve_device=resolve_device,
    objective_for_trajectory=objective_for_trajectory,
    build_model=model_for,
    parameter_layout=layout_of,
    buffer_layout=buffer_layout,
    train=train,
    load_checkpoint=load_checkpoint,
    recording={"BatchLoss": BatchLoss, "KerasRecorder": KerasRecorder},
    objective_for_model=objective_for_model,
    flat_parameters=flatten_parameters,
)

__all__ = [
    "BACKEND",
    "TFHessianOperator",
    "TFObjective",
    "channels_last",
    "dtype_policy",
    "model_for",
    "objective_for_trajectory",
    "resolve_device",
]
