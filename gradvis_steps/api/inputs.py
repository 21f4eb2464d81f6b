"""What the Python API takes from a user: a torch or Keras model, data as arrays or batches, a loss; checked, and
turned into a backend's objective at the model's own parameters.

Data: ``(x, y)`` arrays (numpy, torch tensors, TensorFlow tensors), or any iterable of ``(x_b, y_b)`` batches
(a ``DataLoader``, a ``tf.data.Dataset``, a list). Batches are concatenated into one evaluation set, and its
batch size is the first batch's (unless ``batch_size`` is given): the loss and every Hessian-vector product are
means over all samples, each batch weighted by its size, so the batching changes rounding only. Targets keep their
dtype; inputs are evaluated in the model's dtype (a warning says so where that rounds them, e.g. float64 data for a
float32 model; pass ``dtype="float64"`` for a torch model to evaluate in float64 instead).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import losses
from ..backends import Backend, backend
from ..core.objective import Objective
from ..step_settings import HessianSettings

#: the root module of a model class's framework -> the gradvis backend that takes it
FRAMEWORK_OF_MODULE = {"torch": "torch", "keras": "tensorflow", "tensorflow": "tensorflow", "tf_keras": "tensorflow"}


def setting_default(settings: type, name: str) -> Any:
    """The default of field ``name`` of a step's settings dataclass: the API's defaults are the steps' (which read
    the config schema), defined once."""
    return next(f.default for f in dataclasses.fields(settings) if f.name == name)


def framework_of(model: Any) -> str:
    """The backend name for ``model``: ``"torch"`` for an ``nn.Module``, ``"tensorflow"`` for a Keras model (told by
    the modules of its classes, so no framework is imported to ask); a ValueError for anything else."""
    for cls in type(model).__mro__:
        name = FRAMEWORK_OF_MODULE.get(cls.__module__.split(".")[0])
        if name is not None:
            return name
    raise ValueError(f"model of type {type(model).__module__}.{type(model).__qualname__} is not a torch nn.Module or "
                     "a Keras model: the API takes one of those")


def as_array(value: Any) -> np.ndarray:
    """A host numpy array of ``value`` (a numpy array, a torch tensor on any device, a TensorFlow tensor, a list),
    in its own dtype."""
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # a TensorFlow tensor
        return np.asarray(value.numpy())
    return np.asarray(value)


@dataclass(frozen=True)
class Data:
    """The evaluation set: inputs ``x`` ``(n, ...)`` and targets ``y`` ``(n,)`` or ``(n, d)`` as host arrays, and
    the batch size the data came in (None: given as whole arrays)."""

    x: np.ndarray
    y: np.ndarray
    batch_size: int | None = None


def _is_arrays(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "shape") for a in data)


def data_arrays(data: Any) -> Data:
    """``data`` as one evaluation set (module docstring); a ValueError naming what is wrong for anything else."""
    if _is_arrays(data):
        x, y, batch_size = as_array(data[0]), as_array(data[1]), None
    else:
        if not isinstance(data, Iterable) or isinstance(data, (str, bytes, dict)):
            raise ValueError(f"data of type {type(data).__name__} is neither (x, y) arrays nor an iterable of "
                             "(x, y) batches")
        xs, ys = [], []
        for i, batch in enumerate(data):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError(f"batch {i} of data is a {type(batch).__name__}, not an (x, y) pair: data must be "
                                 "(x, y) arrays or an iterable of (x, y) batches")
            xs.append(as_array(batch[0]))
            ys.append(as_array(batch[1]))
            for what, parts in (("inputs", xs), ("targets", ys)):
                if parts[-1].dtype != parts[0].dtype or parts[-1].shape[1:] != parts[0].shape[1:]:
                    raise ValueError(f"batch {i} has {what} of dtype {parts[-1].dtype} and shape "
                                     f"{parts[-1].shape}, batch 0 {parts[0].dtype} {parts[0].shape}: all batches "
                                     "must agree (beyond the sample axis)")
        if not xs:
            raise ValueError("data is an empty iterable: give (x, y) arrays or at least one (x, y) batch")
        x, y, batch_size = np.concatenate(xs), np.concatenate(ys), len(xs[0])
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"data has {x.shape[0] if x.ndim else 'no'} inputs (shape {x.shape}) and "
                         f"{y.shape[0] if y.ndim else 'no'} targets (shape {y.shape}): give one target per input, "
                         "at least one sample")
    return Data(x, y, batch_size)


@dataclass
class Problem:
    """A user's model, data and loss made into a backend objective, and the point: the model's own parameters."""

    objective: Objective
    theta: Any  # the model's flat parameters, as the objective's array (tensor) type
    framework: str
    backend: Backend
    loss: dict
    data: Data
    dtype: str

    @property
    def dim(self) -> int:
        """Number of trainable parameters (the Hessian is dim x dim)."""
        return int(self.objective.dim)


def problem(model: Any, data: Any, loss: str | dict | None = "cross_entropy", *, batch_size: int | None = None,
            device: str | None = None, dtype: str | None = None,
            hvp_mode: str = setting_default(HessianSettings, "hvp_mode"),
            hvp_memory_mb: float | str = setting_default(HessianSettings, "hvp_memory_mb"),
            grid_batching: str = "auto") -> Problem:
    """Check the user's inputs and build the objective (loss, gradient, Hessian products) of ``model`` over
    ``data`` at its current parameters. ``loss``: a name of :data:`gradvis_steps.losses.LOSSES` or a spec dict
    (``{"name": "custom", "entry_point": "module:function"}``); ``batch_size`` None: the first batch's size for
    batches, the steps' default for arrays; ``device`` None: where the model is; ``dtype`` None: the model's."""
    spec = losses.normalize(loss)  # a ValueError naming an unknown loss and the accepted ones
    arrays = data_arrays(data)
    framework = framework_of(model)
    chosen = backend(framework)
    if chosen.objective_for_model is None or chosen.flat_parameters is None:
        raise ValueError(f"the {framework} backend takes no user models (it offers no objective_for_model)")
    model_dtype = np.asarray(chosen.flat_parameters(model)).dtype.name
    dtype = model_dtype if dtype is None else dtype
    if batch_size is None:
        batch_size = arrays.batch_size or setting_default(HessianSettings, "batch_size")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if np.issubdtype(arrays.x.dtype, np.floating) and arrays.x.dtype.itemsize > np.dtype(dtype).itemsize:
        warnings.warn(f"the inputs are {arrays.x.dtype}, evaluated in {dtype} (the model's dtype): they are rounded",
                      stacklevel=3)
    objective = chosen.objective_for_model(model, arrays.x, arrays.y, loss=spec, batch_size=int(batch_size),
                                           device=device, dtype=dtype, hvp_memory_mb=hvp_memory_mb,
                                           hvp_mode=hvp_mode, grid_batching=grid_batching)
    theta = objective.initial_point()
    return Problem(objective, theta, framework, chosen, spec, arrays, dtype)
