"""Training settings: what the train step records in a trajectory's run config, the same for every framework."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and checkpoint settings (paper section 3.3: batch 256, lr 0.01/0.001, momentum 0.9)."""

    epochs: int = 1
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    checkpoint_every: int = 1
    max_iterations: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every}
        for key, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1 or unset, got {self.max_iterations!r}")
