"""A user's own Keras model and dataset, named by entry point in the TF tests (``tf_custom_models:small_cnn``)."""

from __future__ import annotations

import keras
import numpy as np

from gradvis_steps.data import ArrayDataset


def small_cnn(input_shape: tuple[int, ...], num_classes: int, filters: int = 3) -> keras.Model:
    """Conv + batch-norm + dense with Keras' automatic layer names (they differ between two builds in one process)."""
    channels, height, width = input_shape
    inputs = keras.Input((height, width, channels))
    x = keras.layers.Conv2D(filters, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def blobs(n: int = 96, seed: int = 0) -> ArrayDataset:
    """Two classes of 1x6x6 images: noise around +1 or -1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = (rng.standard_normal((n, 1, 6, 6)) + (2 * y - 1)[:, None, None, None]).astype(np.float32)
    return ArrayDataset("blobs", x, y.astype(np.int64), num_classes=2)
