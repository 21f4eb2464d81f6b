"""Recording Keras ``model.fit`` (``gradvis_steps.record.KerasRecorder``): a fit that takes the TensorFlow train step's
SGD steps gives its trajectory bitwise; a later fit appends; ``logs["loss"]`` (a running mean) is never stored as a
batch loss.

``model.fit`` with Keras' own ``SGD`` cannot give the train step's points bitwise: Keras' momentum update is
``v = mu v - lr g; theta += v`` where the train step (torch's rule) takes ``b = mu b + g; theta -= lr b``, the same
maths rounded differently. The user here compiles the model with an optimizer that takes torch's rule (a few lines of
``keras.optimizers.Optimizer``) and a loss that is the train step's mean; the forward, the gradient, the batch-norm
updates and the data order are ``fit``'s own. Bitwise equality then needs one more thing: TensorFlow's graph
optimizer (grappler) rewrites the arithmetic of the update (``arithmetic_optimization``), and it rewrites the train
step's update of one flat vector and fit's update of each variable differently (1-ulp differences from the second step
on; the gradients are bitwise equal). With that rewrite off in both, fit gives the train step's trajectory bitwise;
with it on (the default), to float32 rounding."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from step_helpers import step as run_step

from gradvis_steps import train as train_step
from gradvis_steps.backends import backend
from gradvis_steps.storage.trajectory import Trajectory

tf = pytest.importorskip("tensorflow", reason="the tensorflow backend needs TensorFlow (the 'tensorflow' extra)")
from tf_helpers import few_tf_threads  # noqa: E402

few_tf_threads()
import keras  # noqa: E402

from gradvis_steps.backends.tensorflow.objective import channels_last  # noqa: E402
from gradvis_steps.backends.tensorflow.training import epoch_permutation  # noqa: E402
from gradvis_steps.record import BatchLoss, KerasRecorder  # noqa: E402

MODEL = {"name": "resnet", "depth": 8, "width": 2}
LR, MOMENTUM, DECAY, SEED, BATCH, EPOCHS = 0.05, 0.9, 1e-4, 3, 512, 2
SERIES = ("params", "buffers", "iteration", "epoch", "batch_loss", "batch_loss_known")


class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and weight decay by torch's rule, as the train step takes it."""

    def __init__(self, learning_rate: float, momentum: float, decay: float, **kwargs):
        super().__init__(learning_rate=learning_rate, name="torch_sgd", **kwargs)
        self.mu, self.decay = momentum, decay

    def build(self, variables):
        super().build(variables)
        self.buffers = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        buffer = self.buffers[self._get_variable_index(variable)]
        lr = tf.cast(learning_rate, variable.dtype)
        mu, decay = tf.constant(self.mu, variable.dtype), tf.constant(self.decay, variable.dtype)
        buffer.assign(mu * buffer + (gradient + decay * variable))
        variable.assign(variable - lr * buffer)


def mean_cross_entropy(y, logits):
    """The train step's loss (one scalar: Keras' mean over it divides by 1)."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int64), logits=logits))


@pytest.fixture
def no_arithmetic_rewrites():
    """Grappler's arithmetic optimizer off while the test's functions are traced (restored after)."""
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    yield
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": before.get("arithmetic_optimization",
                                                                                         True)})


def train_step_run(path):
    run_step(train_step, "--framework", "tensorflow", "--dataset", "digits", "--model", "resnet", "--model-option",
             "depth=8", "--model-option", "width=2", "--epochs", EPOCHS, "--batch-size", BATCH, "--lr", LR,
             "--momentum", MOMENTUM, "--weight-decay", DECAY, "--seed", SEED, "--no-progress", "--out", path)
    return path


def assert_same(path, reference, *, bitwise: bool = True):
    with h5py.File(path) as a, h5py.File(reference) as b:
        for name in SERIES:
            if bitwise or name not in ("params", "buffers", "batch_loss"):
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name, strict=True)
            else:
                np.testing.assert_allclose(a[name][()], b[name][()], rtol=1e-5, atol=1e-7, err_msg=name)
        for name in ("layout", "buffer_layout"):
            assert a.attrs[name] == b.attrs[name], name


def users_fit(digits, path, epochs=range(EPOCHS), *, key: str | None = "batch_loss", model=None):
    """A user's script: the backend's model and init, the train step's sample order, ``fit`` with the recorder."""
    if model is None:
        model = backend("tensorflow").build_model({"model": MODEL, "train": {"seed": SEED}}, digits)
        model.compile(optimizer=TorchSGD(LR, MOMENTUM, DECAY), loss=mean_cross_entropy,
                      metrics=[BatchLoss(mean_cross_entropy)], jit_compile=False)
    x, y = channels_last(digits.x_train), np.asarray(digits.y_train, dtype=np.int64)
    data = None
    for epoch in epochs:
        order = epoch_permutation(len(x), SEED, epoch)
        part = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(BATCH)
        data = part if data is None else data.concatenate(part)
    rec = KerasRecorder(path, model_spec=MODEL, dataset_spec="digits", batch_loss_key=key)
    model.fit(data, epochs=epochs[-1] + 1, initial_epoch=epochs[0], steps_per_epoch=math.ceil(len(x) / BATCH),
              callbacks=[rec], verbose=0)
    return model


def test_fit_with_the_default_graph_rewrites_agrees_to_rounding(digits, tmp_path):
    """Grappler's arithmetic optimizer rewrites the update of the train step's flat vector and that of fit's
    per-variable one differently: both runs agree to a few float32 roundings from the second step on."""
    reference = train_step_run(tmp_path / "train_step.h5")
    users_fit(digits, tmp_path / "fit.h5")
    assert_same(tmp_path / "fit.h5", reference, bitwise=False)


def test_fit_with_the_train_steps_update_records_its_trajectory_bitwise(no_arithmetic_rewrites, digits, tmp_path):
    reference = train_step_run(tmp_path / "train_step.h5")
    path = tmp_path / "fit.h5"
    users_fit(digits, path)
    assert_same(path, reference)
    with Trajectory(path) as t:
        assert t.config["source"]["kind"] == "recorded" and t.config["source"]["optimizer"]["class"] == "TorchSGD"
        assert t.config["framework"] == "tensorflow" and "train" not in t.config
    # fit in two calls (one epoch each): the second appends; the point between them keeps no loss (the first fit's
    # final point, stored before the second fit's first batch)
    split = tmp_path / "split.h5"
    model = users_fit(digits, split, [0])
    users_fit(digits, split, [1], model=model)
    with Trajectory(split) as t, Trajectory(reference) as ref:
        assert t.iterations.tolist() == ref.iterations.tolist()
        for row in range(len(t)):
            np.testing.assert_array_equal(t.params(row), ref.params(row), strict=True)
        assert t.batch_loss_known.tolist() == [True, True, True, False, True, True, False]


def test_without_a_batch_loss_entry_no_loss_is_stored(digits, tmp_path):
    """``logs["loss"]`` is the epoch's running mean: not a batch loss, so the losses stay not known."""
    path = tmp_path / "noloss.h5"
    users_fit(digits, path, [0], key=None)
    with Trajectory(path) as t:
        assert not t.batch_loss_known.any() and np.isnan(t.batch_loss).all() and len(t) == 4
    with pytest.raises(ValueError, match="batch_loss_key 'nope' is not among the batch logs"):
        users_fit(digits, tmp_path / "bad.h5", [0], key="nope")


def test_a_model_the_spec_does_not_build_is_one_clear_error(digits, tmp_path):
    model = backend("tensorflow").build_model({"model": MODEL}, digits)
    rec = KerasRecorder(tmp_path / "t.h5", model_spec={**MODEL, "width": 4}, dataset_spec="digits")
    rec.set_model(model)
    with pytest.raises(ValueError, match=r"the model does not match model_spec \{'name': 'resnet', 'depth': 8, "
                                         r"'width': 4\}: its variables"):
        rec.on_train_begin()
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        KerasRecorder(tmp_path / "t.h5", model_spec=MODEL, dataset_spec="digits", every=0)
