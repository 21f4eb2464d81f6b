"""A custom loss for the tests, as a user would write one: per-sample losses from (outputs, targets), one function
per framework (the run config names the one of its framework: ``custom_losses:torch_log_cosh``)."""

from __future__ import annotations


def torch_log_cosh(outputs, targets, scale: float = 1.0):  # noqa: ANN001, ANN201 (torch tensors; torch imported lazily)
    """``sum_j scale * log(cosh((z_j - y_j) / scale))`` per sample: a smooth Huber-like regression loss."""
    import torch

    r = (outputs - targets.reshape(outputs.shape)) / scale
    # log(cosh(r)) = |r| + log1p(exp(-2|r|)) - log 2, stable for large |r|
    return scale * (r.abs() + torch.log1p(torch.exp(-2 * r.abs())) - 0.6931471805599453).sum(dim=1)


def tf_log_cosh(outputs, targets, scale: float = 1.0):  # noqa: ANN001, ANN201 (TensorFlow tensors)
    """The same loss in TensorFlow."""
    import tensorflow as tf

    r = (outputs - tf.reshape(targets, tf.shape(outputs))) / scale
    return scale * tf.reduce_sum(tf.abs(r) + tf.math.log1p(tf.exp(-2 * tf.abs(r))) - 0.6931471805599453, axis=1)
