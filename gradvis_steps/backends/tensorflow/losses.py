"""A run's loss in TensorFlow: per-sample losses and correct predictions of one batch's outputs.

The spec (:mod:`gradvis_steps.losses`) says which loss. Cross-entropy is ``sparse_softmax_cross_entropy_with_logits``,
as it always was here, so its sums and means are bitwise those of earlier versions.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ...losses import LossSpec


class TFLoss(LossSpec):
    """The loss a spec names, as TensorFlow functions of outputs ``z`` ``(n, d)`` and targets ``y``."""

    def targets(self, y: np.ndarray, dtype: tf.DType) -> tf.Tensor:
        """The targets as this loss takes them: int64 classes for cross-entropy; ``(n, d)`` in the objective's
        dtype for mse and bce_with_logits; for a custom loss integer targets as int64 and float ones in the
        objective's dtype, shaped as the dataset gives them. Call under the device the tensors belong on."""
        y = np.asarray(y)
        integer = np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_
        if self.name == "cross_entropy" or (self.name == "custom" and integer):
            return tf.constant(y, dtype=tf.int64)
        if self.name in ("mse", "bce_with_logits"):
            y = y.reshape(len(y), -1)
        return tf.constant(y, dtype=dtype)

    def per_sample(self, z: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Per-sample losses ``(n,)`` of outputs ``z`` ``(n, d)``."""
        if self.name == "cross_entropy":
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
        if self.name == "mse":
            return tf.reduce_mean(tf.square(z - y), axis=-1)
        if self.name == "bce_with_logits":
            return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z), axis=-1)
        losses = self.custom(z, y)
        if losses.shape.rank != 1:
            raise ValueError(f"loss {self.spec['entry_point']!r} returned shape {tuple(losses.shape)}; expected "
                             "the per-sample losses, a tensor of shape (n,)")
        return losses

    def correct(self, z: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Correct predictions summed over the batch (float64): argmax for cross-entropy, the share of labels with
        ``(z > 0) == y`` per sample for bce_with_logits, NaN where accuracy means nothing."""
        if self.name == "cross_entropy":
            return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(z, axis=1), y), tf.float64))
        if self.name == "bce_with_logits":
            hits = tf.cast(tf.equal(z > 0, y > 0.5), tf.float64)
            return tf.reduce_sum(tf.reduce_mean(hits, axis=-1))
        return tf.constant(math.nan, tf.float64)


__all__ = ["TFLoss"]
