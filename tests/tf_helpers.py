"""Helpers of the TensorFlow tests: import them only after ``pytest.importorskip("tensorflow")``."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def few_tf_threads(threads: int = 2) -> None:
    """Keep TensorFlow on the CI machine's 2 cores (only possible before its runtime starts; later calls keep it)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime is already running: it keeps its settings
        pass


def float64_copy(model):  # noqa: ANN001, ANN201 (keras.Model in and out; keras is imported lazily)
    """A float64 clone of a functional Keras ``model`` (its layers rebuilt from their configs) with its values."""
    import keras

    from gradvis_steps.backends.tensorflow.flat import assign_like

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float64"})

    copy = keras.models.clone_model(model, clone_function=clone)
    assign_like(copy, model)
    assert all(str(v.dtype) == "float64" for v in copy.variables if "float" in str(v.dtype))
    return copy


__all__ = ["float64_copy", "few_tf_threads"]
