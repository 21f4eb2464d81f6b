"""Training with SGD + momentum on a flat parameter vector, a checkpoint every k iterations (as the torch backend).

The update is torch's SGD, written out so the two frameworks train alike: ``g += weight_decay * theta``, ``buf =
momentum * buf + g``, ``theta -= lr * buf`` (Keras' own SGD decouples weight decay and scales the velocity by the
learning rate). One ``tf.function`` takes a step: the model is called functionally (``stateless_call``, training
mode) with the flat vector's pieces and returns its updated batch-norm statistics. The sample order of an epoch
depends only on (seed, epoch), so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ...core.training import TrainSettings, run_training
from ...data.base import ArrayDataset
from ...storage.trajectory import TrajectoryWriter
from .flat import buffer_layout, flatten_parameters, layout_of, load_flat_parameters, unflatten_buffers
from .losses import TFLoss
from .objective import channels_last


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Sample order of one epoch; depends only on (seed, epoch) so a resumed run sees the same order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)])).permutation(n)


def train(model: keras.Model, dataset: ArrayDataset, settings: TrainSettings, writer: TrajectoryWriter,
          device: str = "/CPU:0", progress: bool = True, loss: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on the dataset's training split, appending checkpoints to ``writer``; the model holds the final
    point afterwards (the loop, its checkpoints, resume and divergence check: :func:`~...core.training.run_training`).
    Each step takes the mean of the run's ``loss`` over its batch (a spec of :mod:`gradvis_steps.losses`; None:
    cross-entropy).
    """
    criterion = TFLoss(loss)
    layout = layout_of(model)
    buffers_layout = buffer_layout(model)
    sizes, shapes = [spec.numel for spec in layout], [spec.shape for spec in layout]
    dtype = model.trainable_variables[0].dtype if model.trainable_variables else "float32"
    n = len(dataset.x_train)

    with tf.device(device):
        theta = tf.Variable(flatten_parameters(model), dtype=dtype)
        momentum = tf.Variable(tf.zeros_like(theta))
        buffers = [tf.Variable(tf.identity(v.value), trainable=False) for v in model.non_trainable_variables]
        x = tf.constant(channels_last(dataset.x_train), dtype=dtype)
        y = criterion.targets(dataset.y_train, tf.as_dtype(dtype))

    lr, mu, decay = (tf.constant(value, dtype=dtype) for value in (settings.lr, settings.momentum,
                                                                   settings.weight_decay))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def step(batch: tf.Tensor) -> tf.Tensor:
        xb, yb = tf.gather(x, batch), tf.gather(y, batch)
        with tf.GradientTape() as tape:
            pieces = [tf.reshape(p, s) for p, s in zip(tf.split(theta, sizes), shapes, strict=True)]
            logits, new_buffers = model.stateless_call(pieces, [b.read_value() for b in buffers], xb, training=True)
            loss = tf.reduce_mean(criterion.per_sample(logits, yb))
        gradient = tape.gradient(loss, theta) + decay * theta
        momentum.assign(mu * momentum + gradient)
        theta.assign_sub(lr * momentum)
        for variable, value in zip(buffers, new_buffers, strict=True):
            variable.assign(value)
        return loss

    def snapshot() -> tuple[np.ndarray, np.ndarray]:
        flat = [b.numpy().astype(np.float64).reshape(-1) for b in buffers]
        return theta.numpy().astype(np.float32), np.concatenate(flat) if flat else np.zeros(0)

    def optimizer_state() -> dict[str, np.ndarray]:
        return {"momentum": momentum.numpy().astype(np.float64)}

    def restore(state: dict[str, Any]) -> None:
        theta.assign(np.asarray(state["params"]).astype(theta.dtype.as_numpy_dtype))
        restored = unflatten_buffers(state["buffers"], buffers_layout)
        for variable, entry in zip(buffers, buffers_layout, strict=True):
            variable.assign(restored[entry["name"]].astype(variable.dtype.as_numpy_dtype))
        momentum.assign(np.asarray(state["momentum"]).astype(theta.dtype.as_numpy_dtype))

    summary = run_training(settings, n, writer, snapshot=snapshot,
                           order=lambda epoch: epoch_permutation(n, settings.seed, epoch),
                           step=lambda batch: step(tf.constant(batch, dtype=tf.int64)),
                           optimizer_state=optimizer_state, restore=restore, progress=progress)
    load_flat_parameters(model, theta.numpy())
    for variable, value in zip(model.non_trainable_variables, buffers, strict=True):
        variable.assign(value.numpy())
    return summary


__all__ = ["epoch_permutation", "train"]
