"""Training with SGD + momentum, Adam or AdamW on a flat parameter vector, a checkpoint every k iterations (as the
torch backend).

The updates are torch's, written out so the two frameworks train alike (Keras' own optimizers differ: its SGD
decouples weight decay and scales the velocity by the learning rate, its Adam puts epsilon inside the bias
correction). With g the batch gradient and lr_t the schedule's learning rate of the iteration (a float argument of
the compiled step, so a schedule retraces nothing):

- sgd:   ``g += weight_decay * theta``, ``buf = momentum * buf + g``, ``theta -= lr_t * buf``
- adam:  ``g += weight_decay * theta`` (adamw instead: ``theta *= 1 - lr_t * weight_decay``), then with step count
  t: ``m += (1 - beta1) (g - m)``, ``v = beta2 v + (1 - beta2) g^2``,
  ``theta -= lr_t / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`` (the bias corrections in float64,
  as torch computes them).

One ``tf.function`` takes a step: the model is called functionally (``stateless_call``, training mode) with the flat
vector's pieces and returns its updated batch-norm statistics. The sample order of an epoch depends only on (seed,
epoch), and the optimizer's state (momentum; Adam's moments and step count) is part of the resume state, so a
resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import math
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

    adam = settings.optimizer in ("adam", "adamw")
    with tf.device(device):
        theta = tf.Variable(flatten_parameters(model), dtype=dtype)
        momentum = tf.Variable(tf.zeros_like(theta))  # sgd: the momentum buffer; adam: the first moment m
        second = tf.Variable(tf.zeros_like(theta)) if adam else None  # adam: the second moment v
        buffers = [tf.Variable(tf.identity(v.value), trainable=False) for v in model.non_trainable_variables]
        x = tf.constant(channels_last(dataset.x_train), dtype=dtype)
        y = criterion.targets(dataset.y_train, tf.as_dtype(dtype))
    adam_steps = [0]  # adam: steps taken (torch's ``step``), part of the resume state

    mu, decay = (tf.constant(value, dtype=dtype) for value in (settings.momentum, settings.weight_decay))
    # 1 - beta in float64, then rounded (as torch passes them), not 1 - beta rounded to float32
    rest1, beta2, rest2, eps = (tf.constant(value, dtype=dtype) for value in (
        1 - settings.beta1, settings.beta2, 1 - settings.beta2, settings.eps))
    scalar = tf.TensorSpec([], dtype)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), scalar, scalar, scalar, scalar])
    def step(batch: tf.Tensor, lr: tf.Tensor, shrink: tf.Tensor, step_size: tf.Tensor, root: tf.Tensor
             ) -> tf.Tensor:
        """One update with learning rate ``lr``; adam's ``shrink`` = 1 - lr wd (adamw), ``step_size`` = lr / (1 -
        beta1^t), ``root`` = sqrt(1 - beta2^t)."""
        xb, yb = tf.gather(x, batch), tf.gather(y, batch)
        with tf.GradientTape() as tape:
            pieces = [tf.reshape(p, s) for p, s in zip(tf.split(theta, sizes), shapes, strict=True)]
            logits, new_buffers = model.stateless_call(pieces, [b.read_value() for b in buffers], xb, training=True)
            loss = tf.reduce_mean(criterion.per_sample(logits, yb))
        gradient = tape.gradient(loss, theta)
        if settings.optimizer != "adamw":
            gradient = gradient + decay * theta  # coupled weight decay (L2), as torch's SGD and Adam
        if not adam:
            momentum.assign(mu * momentum + gradient)
            theta.assign_sub(lr * momentum)
        else:
            if settings.optimizer == "adamw":
                theta.assign(theta * shrink)  # decoupled weight decay
            momentum.assign_add(rest1 * (gradient - momentum))
            second.assign(beta2 * second + rest2 * gradient * gradient)
            theta.assign_sub(step_size * momentum / (tf.sqrt(second) / root + eps))
        for variable, value in zip(buffers, new_buffers, strict=True):
            variable.assign(value)
        return loss

    def take_step(batch: np.ndarray, lr: float) -> tf.Tensor:
        shrink = step_size = root = 1.0
        if adam:
            adam_steps[0] += 1
            t = adam_steps[0]
            # float64 scalars as torch's Adam computes them, rounded to the parameters' dtype once
            shrink, step_size = 1 - lr * settings.weight_decay, lr / (1 - settings.beta1 ** t)
            root = math.sqrt(1 - settings.beta2 ** t)
        return step(tf.constant(batch, dtype=tf.int64), *(tf.constant(v, dtype=dtype) for v in
                                                         (lr, shrink, step_size, root)))

    def snapshot() -> tuple[np.ndarray, np.ndarray]:
        flat = [b.numpy().astype(np.float64).reshape(-1) for b in buffers]
        return theta.numpy().astype(np.float32), np.concatenate(flat) if flat else np.zeros(0)

    def optimizer_state() -> dict[str, np.ndarray]:
        if not adam:
            return {"momentum": momentum.numpy().astype(np.float64)}
        return {"exp_avg": momentum.numpy().astype(np.float64), "exp_avg_sq": second.numpy().astype(np.float64),
                "adam_step": np.int64(adam_steps[0])}

    def restore(state: dict[str, Any]) -> None:
        theta.assign(np.asarray(state["params"]).astype(theta.dtype.as_numpy_dtype))
        restored = unflatten_buffers(state["buffers"], buffers_layout)
        for variable, entry in zip(buffers, buffers_layout, strict=True):
            variable.assign(restored[entry["name"]].astype(variable.dtype.as_numpy_dtype))
        as_theta = theta.dtype.as_numpy_dtype
        if not adam:
            momentum.assign(np.asarray(state["momentum"]).astype(as_theta))
        else:
            momentum.assign(np.asarray(state["exp_avg"]).astype(as_theta))
            second.assign(np.asarray(state["exp_avg_sq"]).astype(as_theta))
            adam_steps[0] = int(state["adam_step"])

    summary = run_training(settings, n, writer, snapshot=snapshot,
                           order=lambda epoch: epoch_permutation(n, settings.seed, epoch),
                           step=take_step,
                           optimizer_state=optimizer_state, restore=restore, progress=progress)
    load_flat_parameters(model, theta.numpy())
    for variable, value in zip(model.non_trainable_variables, buffers, strict=True):
        variable.assign(value.numpy())
    return summary


__all__ = ["epoch_permutation", "train"]
