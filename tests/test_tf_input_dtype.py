"""A Keras model whose ``Input`` is float32 (Keras' default ``floatx``, or pinned by the model) evaluated in float64:
the backend rebuilds it with float64 inputs, so float64 data is not rounded to float32 on the way in (checked against a
numpy float64 forward pass); an objective built on such a model directly says so with a warning."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the tensorflow backend needs TensorFlow (the 'tensorflow' extra)")
from tf_helpers import few_tf_threads  # noqa: E402

few_tf_threads()

from gradvis_steps.backends.tensorflow import model_for  # noqa: E402
from gradvis_steps.backends.tensorflow.objective import TFObjective  # noqa: E402
from gradvis_steps.data import ArrayDataset  # noqa: E402

PINNED = '''import keras

def net(input_shape, num_classes):
    inputs = keras.Input(input_shape, dtype="float32")
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="out")(hidden))
'''


def numpy_loss(model, x, y) -> float:
    """Mean cross-entropy of a Dense-ReLU-Dense network in float64 numpy, from the model's weights."""
    w1, b1, w2, b2 = (np.asarray(v.numpy(), dtype=np.float64) for v in model.trainable_variables)
    logits = np.maximum(x.reshape(len(x), -1) @ w1 + b1, 0) @ w2 + b2
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_norm - logits[np.arange(len(y)), y]))


@pytest.mark.parametrize("spec", [{"name": "mlp", "hidden": [5]}, {"name": "custom", "entry_point": "pinned:net"}],
                         ids=["floatx_input", "pinned_float32_input"])
def test_float64_evaluation_takes_float64_inputs(spec, tmp_path, monkeypatch):
    (tmp_path / "pinned.py").write_text(PINNED)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6))  # float64 values float32 cannot hold
    y = rng.integers(0, 3, 40)
    data = ArrayDataset("float64 data", x, y, 3)
    model = model_for({"model": spec}, data, "float64")
    assert [str(t.dtype) for t in model.inputs] == ["float64"]
    objective = TFObjective(model, x, y, batch_size=16, dtype="float64")
    truth = numpy_loss(model, x, y)
    assert objective.loss(objective.initial_point()) == pytest.approx(truth, rel=1e-14, abs=0)
    # the same weights behind a float32 input: warned, and the data rounded (what the rebuild avoids)
    rounded_model = model_for({"model": spec}, data, "float32")
    rounded_model = _float64_layers_float32_input(rounded_model)
    with pytest.warns(UserWarning, match="takes float32 inputs: its float64 evaluation rounds the data to float32"):
        rounded = TFObjective(rounded_model, x, y, batch_size=16, dtype="float64")
    loss = rounded.loss(objective.initial_point())
    assert abs(loss - truth) > 1e-12 * truth and loss == pytest.approx(numpy_loss(model, x.astype(np.float32), y),
                                                                        rel=1e-14)


def _float64_layers_float32_input(model):
    """A float64 copy of ``model`` (float64 layers) that keeps its float32 ``Input``."""
    import keras

    from gradvis_steps.backends.tensorflow.flat import assign_like

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float64"})

    copy = keras.models.clone_model(model, clone_function=clone)
    assign_like(copy, model)
    assert [str(t.dtype) for t in copy.inputs] == ["float32"]
    return copy
