"""Per-backend case adapters for the backend contract suite (``test_backend_contract.py``).

The suite reaches a backend through the registry (``backend(name)``: ``build_model``, ``parameter_layout``,
``buffer_layout``, ``objective_for_trajectory``) and the ``Objective``/``HessianOperator`` protocols. A
:class:`BackendCase` adds the few things the seam does not give, each about the *user's model* (never the objective),
so that they serve as independent truths: the model's own tensors, its buffers and its own forward pass.

A new backend joins the suite by adding a factory to :data:`CASES` that returns a :class:`BackendCase` (calling
``pytest.importorskip`` on its framework first, so the suite skips it with a reason where the framework is missing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

Model = Any  # the framework's model type


@dataclass(frozen=True)
class BackendCase:
    """What the contract suite needs of one backend beyond the registry and the protocols.

    - ``name``: the registry name (``backend(name)``) and the run config's ``framework``.
    - ``device``: a device name ``objective_for_trajectory`` accepts for the host CPU.
    - ``warm_buffers(model, x)``: run the model in training mode on the inputs ``x`` (numpy, the dataset's layout)
      so that batch-norm running statistics move off their defaults; the trainable parameters must not change.
    - ``named_parameters(model) -> {layout name: float64 array}``: the model's trainable tensors, each in the
      shape its layout entry records.
    - ``flat_buffers(model) -> np.ndarray``: the model's buffers as one float64 vector in the order of
      ``backend.buffer_layout(model)`` (what the train step stores per checkpoint).
    - ``logits(model, theta, x) -> np.ndarray``: the model's own inference-mode forward pass in float64 over ``x``
      with its trainable parameters replaced by the flat vector ``theta`` (numpy) and its own buffers, the model
      itself left unchanged: ``(len(x), classes)``.
    """

    name: str
    device: str
    warm_buffers: Callable[[Model, np.ndarray], None]
    named_parameters: Callable[[Model], dict[str, np.ndarray]]
    flat_buffers: Callable[[Model], np.ndarray]
    logits: Callable[[Model, np.ndarray, np.ndarray], np.ndarray]


def torch_case() -> BackendCase:
    torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch")

    from gradvis_steps.backends.torch.flat import flatten_buffers, layout_of, load_flat_parameters

    def warm_buffers(model: Model, x: np.ndarray) -> None:
        was_training = model.training
        model.train()
        with torch.no_grad():
            for start in range(0, len(x), 8):
                model(torch.as_tensor(x[start:start + 8], dtype=next(model.parameters()).dtype))
        model.train(was_training)

    def named_parameters(model: Model) -> dict[str, np.ndarray]:
        return {name: p.detach().to(torch.float64).numpy().copy() for name, p in model.named_parameters()}

    def logits(model: Model, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        module = copy.deepcopy(model).double().eval()
        load_flat_parameters(module, torch.as_tensor(theta, dtype=torch.float64), layout_of(model))
        with torch.no_grad():
            return module(torch.as_tensor(x, dtype=torch.float64)).numpy()

    return BackendCase("torch", "cpu", warm_buffers, named_parameters, flatten_buffers, logits)


def tensorflow_case() -> BackendCase:
    pytest.importorskip("tensorflow", reason="the tensorflow backend needs TensorFlow (the 'tensorflow' extra)")
    from tf_helpers import few_tf_threads, float64_copy

    few_tf_threads()
    from gradvis_steps.backends.tensorflow.flat import flatten_buffers, load_flat_parameters
    from gradvis_steps.backends.tensorflow.objective import channels_last

    def warm_buffers(model: Model, x: np.ndarray) -> None:
        images = channels_last(x)
        for start in range(0, len(images), 8):
            model(images[start:start + 8], training=True)  # Keras updates the moving statistics in training mode

    def named_parameters(model: Model) -> dict[str, np.ndarray]:
        return {v.path: np.asarray(v.numpy(), dtype=np.float64) for v in model.trainable_variables}

    def logits(model: Model, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        copy = float64_copy(model)  # the model's own layers and variables, not the objective's functional call
        load_flat_parameters(copy, theta)
        return np.asarray(copy(channels_last(x).astype(np.float64), training=False))

    return BackendCase("tensorflow", "cpu", warm_buffers, named_parameters, flatten_buffers, logits)


#: backend name -> factory of its case (skips where the framework is not installed)
CASES: dict[str, Callable[[], BackendCase]] = {
    "torch": torch_case,
    "tensorflow": tensorflow_case,
}

#: the models every backend is checked with, as run configs name them (tiny, so dense Hessians take seconds)
MODELS: dict[str, dict[str, Any]] = {
    "lenet": {"name": "lenet", "widths": [2, 3, 8, 6]},
    "mlp": {"name": "mlp", "hidden": [8]},
    "resnet-bn": {"name": "resnet", "depth": 8, "width": 2},  # CIFAR ResNet (6n+2, n=1) with batch-norm
}

#: a user's custom loss per backend (``tests/custom_losses.py``), with an option, as a run config names it
CUSTOM_LOSSES: dict[str, dict[str, Any]] = {
    "torch": {"name": "custom", "entry_point": "custom_losses:torch_log_cosh", "scale": 0.5},
    "tensorflow": {"name": "custom", "entry_point": "custom_losses:tf_log_cosh", "scale": 0.5},
}
