"""Keras 3 models of the paper, the same architectures as the torch backend's: LeNet, an MLP, CIFAR ResNet with BN.

Inputs are channels-last (``(batch, height, width, channels)``, TensorFlow's layout on CPUs); the backend transposes
the framework-neutral NCHW datasets once. Weights are initialized from the same distributions as torch's defaults
(uniform in +-1/sqrt(fan_in) for kernels and biases), so runs in the two frameworks start from alike points.
Padding is explicit (``ZeroPadding2D`` then a "valid" convolution) because Keras' ``"same"`` pads a stride-2
convolution on one side only, where torch pads both: explicit padding gives the torch networks' outputs exactly.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras
from keras import layers

from ...entry_points import build_from_spec


@contextlib.contextmanager
def dtype_policy(dtype: str) -> Iterator[None]:
    """Build Keras layers in ``dtype`` inside the block: Keras' global dtype policy, and its ``floatx``, the dtype of
    ``keras.Input`` tensors that name none (both restored afterwards)."""
    previous, previous_floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
        keras.config.set_floatx(previous_floatx)


def _uniform(fan_in: int) -> keras.initializers.Initializer:
    """torch's default for weights and biases of a layer with ``fan_in`` inputs: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _conv(filters: int, kernel: int, fan_in_channels: int, name: str, *, stride: int = 1, padding: int = 0,
          bias: bool = True) -> Callable[[Any], Any]:
    """A 2-D convolution with torch's symmetric zero padding and default initialization."""
    init = _uniform(fan_in_channels * kernel * kernel)
    conv = layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=bias, kernel_initializer=init,
                         bias_initializer=init, name=name)

    def apply(x: Any) -> Any:
        return conv(layers.ZeroPadding2D(padding, name=f"{name}_pad")(x) if padding else x)

    return apply


def _dense(units: int, fan_in: int, name: str) -> layers.Dense:
    init = _uniform(fan_in)
    return layers.Dense(units, kernel_initializer=init, bias_initializer=init, name=name)


def _batch_norm(name: str) -> layers.BatchNormalization:
    """Batch-norm with torch's epsilon (1e-5) and running-average rate (torch momentum 0.1 = Keras momentum 0.9)."""
    return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)


def _channels_last(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Keras input shape of a framework-neutral sample shape (C, H, W) -> (H, W, C); other ranks unchanged."""
    shape = tuple(int(d) for d in input_shape)
    return (*shape[1:], shape[0]) if len(shape) == 3 else shape


def lenet(input_shape: tuple[int, ...], num_classes: int = 10,
          widths: tuple[int, int, int, int] = (6, 16, 120, 84)) -> keras.Model:
    """LeNet-5 (conv6-conv16-fc120-fc84-fc10, 5x5 convolutions, ReLU, 2x2 max-pooling), padding 2 for inputs too
    small for the unpadded network, as the torch ``LeNet``."""
    channels, height, width = input_shape
    c1, c2, f1, f2 = widths
    unpadded = ((min(height, width) - 4) // 2 - 4) // 2
    padding = 0 if unpadded >= 1 else 2

    def side(n: int) -> int:
        return ((n + 2 * padding - 4) // 2 + 2 * padding - 4) // 2

    if side(height) < 1 or side(width) < 1:
        raise ValueError(f"LeNet: input shape {tuple(input_shape)} is too small (need at least 5x5)")
    inputs = keras.Input(_channels_last(input_shape), name="input")
    x = layers.ReLU()(_conv(c1, 5, channels, "conv1", padding=padding)(inputs))
    x = layers.MaxPooling2D(2)(x)
    x = layers.ReLU()(_conv(c2, 5, c1, "conv2", padding=padding)(x))
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.ReLU()(_dense(f1, c2 * side(height) * side(width), "fc1")(x))
    x = layers.ReLU()(_dense(f2, f1, "fc2")(x))
    return keras.Model(inputs, _dense(num_classes, f2, "fc3")(x), name="lenet")


def mlp(input_shape: tuple[int, ...], num_classes: int = 10, hidden: tuple[int, ...] = (64,)) -> keras.Model:
    """Fully connected ReLU network on flattened inputs, as the torch ``MLP``."""
    inputs = keras.Input(_channels_last(input_shape), name="input")
    x = layers.Flatten()(inputs)
    fan_in = math.prod(int(d) for d in input_shape)
    for index, units in enumerate(hidden):
        x = layers.ReLU()(_dense(int(units), fan_in, f"fc{index}")(x))
        fan_in = int(units)
    return keras.Model(inputs, _dense(num_classes, fan_in, f"fc{len(hidden)}")(x), name="mlp")


def _basic_block(x: Any, in_planes: int, planes: int, stride: int, name: str) -> Any:
    """Two 3x3 conv + batch-norm, and a 1x1 conv + BN shortcut when the shape changes (torch ``BasicBlock``)."""
    out = _conv(planes, 3, in_planes, f"{name}_conv1", stride=stride, padding=1, bias=False)(x)
    out = layers.ReLU()(_batch_norm(f"{name}_bn1")(out))
    out = _batch_norm(f"{name}_bn2")(_conv(planes, 3, planes, f"{name}_conv2", padding=1, bias=False)(out))
    shortcut = x
    if stride != 1 or in_planes != planes:
        shortcut = _conv(planes, 1, in_planes, f"{name}_shortcut_conv", stride=stride, bias=False)(x)
        shortcut = _batch_norm(f"{name}_shortcut_bn")(shortcut)
    return layers.ReLU()(layers.Add()([out, shortcut]))


def resnet(input_shape: tuple[int, ...], num_classes: int = 10, depth: int = 20, width: int = 16) -> keras.Model:
    """CIFAR ResNet (He et al. 2016, section 4.2): depth 6n+2, widths (w, 2w, 4w), global pooling."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"ResNet depth must be 6n+2 >= 8 (20, 32, 44, 56, ...), got {depth}")
    blocks = (depth - 2) // 6
    inputs = keras.Input(_channels_last(input_shape), name="input")
    x = _conv(width, 3, int(input_shape[0]), "conv", padding=1, bias=False)(inputs)
    x = layers.ReLU()(_batch_norm("bn")(x))
    in_planes = width
    for stage, planes in enumerate((width, 2 * width, 4 * width)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, in_planes, planes, stride, f"layers{stage * blocks + block}")
            in_planes = planes
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _dense(num_classes, in_planes, "fc")(x), name=f"resnet{depth}")


def resnet20(input_shape: tuple[int, ...], num_classes: int = 10, width: int = 16) -> keras.Model:
    """ResNet-20 for CIFAR (about 0.27 M parameters at width 16)."""
    return resnet(input_shape, num_classes, depth=20, width=width)


MODELS: dict[str, Callable[..., keras.Model]] = {
    "lenet": lenet,
    "mlp": mlp,
    "resnet20": resnet20,
    "resnet": resnet,
}


def float_inputs(model: keras.Model) -> list[Any]:
    """The model's symbolic float inputs (none for a subclassed model, which takes inputs as they come)."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        return []
    return [t for t in inputs if "float" in str(t.dtype)]


def inputs_in(model: keras.Model, dtype: str) -> keras.Model:
    """``model``, or a clone of it whose float ``Input`` tensors are in ``dtype``: a functional model casts what it is
    called with to its inputs' dtype, so a float32 ``Input`` (Keras' default ``floatx``, or one the model pins) would
    round float64 data to float32 without a word (about 1e-9 relative in the loss). The clone shares no variables;
    the caller assigns them. Where no clone can be made, a warning says the inputs are rounded."""
    wrong = [t for t in float_inputs(model) if str(t.dtype) != dtype]
    if not wrong:
        return model
    try:
        inputs = [keras.Input(batch_shape=t.shape, dtype=dtype if "float" in str(t.dtype) else t.dtype, name=t.name)
                  for t in model.inputs]
        clone = keras.models.clone_model(model, input_tensors=inputs if len(inputs) > 1 else inputs[0])
    except Exception as error:  # noqa: BLE001 (any failure of Keras' cloning leaves the model as it is, said once)
        warnings.warn(f"model {model.name!r} takes {wrong[0].dtype} inputs and cannot be rebuilt with {dtype} ones "
                      f"({type(error).__name__}: {error}): its {dtype} evaluation rounds the data to "
                      f"{wrong[0].dtype}", stacklevel=2)
        return model
    if [str(t.dtype) for t in float_inputs(clone)] != [dtype] * len(float_inputs(clone)):
        warnings.warn(f"model {model.name!r} takes {wrong[0].dtype} inputs even when rebuilt: its {dtype} evaluation "
                      f"rounds the data to {wrong[0].dtype}", stacklevel=2)
    return clone


def build_model(spec: dict[str, Any] | str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Build the Keras model a config names: ``{"name": "lenet", **kwargs}`` or ``{"name": "custom", "entry_point":
    "module:function", **kwargs}``, called as ``function(input_shape, num_classes, **kwargs)`` with the dataset's
    sample shape as stored (C, H, W); the model takes channels-last inputs (N, H, W, C)."""
    name, model = build_from_spec(spec, MODELS, tuple(input_shape), num_classes)
    if not isinstance(model, keras.Model):
        raise ValueError(f"model {name!r} factory returned {type(model).__name__}, not a keras.Model")
    if not model.built:
        raise ValueError(f"model {name!r}: the Keras model is not built (give it an Input or call build())")
    return model
