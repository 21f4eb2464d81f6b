"""Your own model for gradvis (written by ``gradvis init --example``): a factory ``(input_shape, num_classes,
**options) -> torch.nn.Module`` that the config names as ``{name: custom, entry_point: "mymodels:mlp", ...}``.

``gradvis run`` puts this folder on PYTHONPATH, so ``mymodels`` imports in every job.
"""

import math

import torch


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 8) -> torch.nn.Module:
    """A one-hidden-layer perceptron; ``hidden`` comes from the config's model options."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(math.prod(input_shape), hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, num_classes),
    )
