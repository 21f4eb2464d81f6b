"""The TensorFlow Objective: loss, accuracy, gradient and exact Hessian-vector products at a flat vector.

The model is called functionally (``keras.Model.stateless_call``) with its trainable variables replaced by pieces of
one flat tensor ``theta`` and its non-trainable ones (batch-norm moving statistics) by the objective's own copies, in
inference mode: the user's model is never changed, and derivatives are taken with respect to ``theta`` itself, a
plain tensor. (Keras 3 variables are not ``tf.Variable`` objects, and ``tf.autodiff.ForwardAccumulator`` does not
see them; a flat tensor sidesteps that.) The exact Hessian-vector product is forward-over-reverse: the
forward-mode derivative (``ForwardAccumulator``) along ``v`` of the reverse-mode gradient (``GradientTape``);
``hvp_mode="double_backprop"`` takes the reverse-mode gradient of ``g . v`` instead (the same values to rounding).

Each per-batch computation is a ``tf.function`` with an input signature whose batch axis is free, traced once for
every batch size (:meth:`TFObjective.tracing_counts` tells how often). Every mean is a sum over samples divided by
the number of samples (:class:`BatchReduction`), so an uneven last batch counts by its size.

Vectors are host numpy arrays (``from_numpy``/``to_numpy`` only fix the dtype): the core Lanczos/SLQ loops run on
numpy, and each product converts its vector to a tensor and back at the operator's edge. On a CPU that costs a copy
of one vector each way, a small share of one product (bench/README.md has the measured figure); a GPU run would
keep vectors on the device instead. Because those loops then call numpy's BLAS between products, an objective on the
CPU limits that BLAS to one thread for the rest of the process (:func:`single_threaded_host_blas`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from ...core.layout import parameter_indices
from ...core.objective import Evaluation
from ...losses import check_targets
from .flat import buffer_layout, flatten_parameters, layout_of, unflatten_buffers
from .losses import TFLoss
from .models import float_inputs

#: The exact ways to take a Hessian-vector product; ``"auto"`` is forward-over-reverse (untimed).
HVP_MODES = ("forward_over_reverse", "double_backprop")
HVP_MODE_CHOICES = ("auto", *HVP_MODES)
DTYPES = {"float32": np.float32, "float64": np.float64}


_BLAS_LIMIT: list[object] = []  # the threadpoolctl limiter, kept alive for the process


def single_threaded_host_blas() -> None:
    """Limit numpy's BLAS to one thread, once per process: after each call its idle threads spin for a while and take
    the cores TensorFlow's next product needs (LeNet SLQ on 2 cores: 1.37x the time of its products with two BLAS
    threads, 1.01x with one; the host Lanczos work is memory-bound and loses nothing)."""
    if _BLAS_LIMIT:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it BLAS keeps its threads
        return
    _BLAS_LIMIT.append(threadpool_limits(limits=1, user_api="blas"))


def channels_last(x: np.ndarray) -> np.ndarray:
    """Framework-neutral images (N, C, H, W) as Keras takes them, (N, H, W, C); other ranks unchanged."""
    x = np.asarray(x)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if x.ndim == 4 else x


class BatchReduction:
    """Batches of ``(x, y)`` of at most ``batch_size`` samples (tensors made once) and means over all samples."""

    def __init__(self, x: tf.Tensor, y: tf.Tensor, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = int(x.shape[0])
        if n != int(y.shape[0]) or n == 0:
            raise ValueError(f"need as many labels as inputs (and at least one): got {n} and {int(y.shape[0])}")
        self.n_samples = n
        self.batch_size = int(batch_size)
        self._batches = [(x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, n, batch_size)]

    def batches(self) -> list[tuple[tf.Tensor, tf.Tensor]]:
        """The ``(x_b, y_b)`` batches in order (the last one may be shorter)."""
        return self._batches

    def total(self, per_batch: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
        """``sum_b per_batch(x_b, y_b)``, summed in batch order (a data-parallel run would Allreduce this)."""
        total = None
        for xb, yb in self._batches:
            part = per_batch(xb, yb)
            total = part if total is None else total + part
        return total

    def mean(self, per_batch: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
        """``sum_b per_batch(x_b, y_b) / n_samples``: the one mean of gradients and Hessian-vector products."""
        return self.total(per_batch) / self.n_samples


class TFObjective:
    """Mean loss of a Keras ``model`` over ``(x, y)`` as a function of its flat trainable variables.

    ``model`` computes in ``dtype`` (build it under that dtype policy: :func:`~.model_for` does); ``x`` is in the
    framework-neutral layout (images NCHW), converted once to channels-last tensors on ``device``. ``loss``: the
    run's loss spec (:mod:`gradvis_steps.losses`; None: cross-entropy); its targets are checked against the model's
    output width."""

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024,
                 device: str = "/CPU:0", dtype: str = "float32", hvp_mode: str = "forward_over_reverse",
                 loss: dict | str | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        if hvp_mode not in HVP_MODE_CHOICES:
            raise ValueError(f"hvp_mode {hvp_mode!r} is not one of {HVP_MODE_CHOICES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as inputs (and at least one): got {len(x)} and {len(y)}")
        wrong = [v.path for v in model.variables if "float" in str(v.dtype) and str(v.dtype) != dtype]
        if wrong:
            raise ValueError(f"the model's variables {wrong[:3]}... are not {dtype}: build the model under the "
                             f"{dtype!r} dtype policy (gradvis_steps.backends.tensorflow.model_for(..., dtype=...))")
        rounding = [str(t.dtype) for t in float_inputs(model) if str(t.dtype) != dtype]
        if rounding:
            warnings.warn(f"model {model.name!r} takes {rounding[0]} inputs: its {dtype} evaluation rounds the data to "
                          f"{rounding[0]} (rebuild it with {dtype} inputs: gradvis_steps.backends.tensorflow.model_for "
                          "does)", stacklevel=2)
        self.model = model
        self.device = device
        if (tf.DeviceSpec.from_string(device).device_type or "CPU").upper() == "CPU":
            single_threaded_host_blas()
        self.dtype = dtype
        self.np_dtype = DTYPES[dtype]
        self.tf_dtype = tf.as_dtype(dtype)
        self.hvp_mode = hvp_mode
        #: how ``"auto"`` was resolved (:meth:`calibrate_hvp`)
        self.hvp_calibration: dict | None = None
        self.layout = layout_of(model)
        self.batch_size = int(batch_size)
        self._sizes = [spec.numel for spec in self.layout]
        self._shapes = [spec.shape for spec in self.layout]
        self._initial = flatten_parameters(model).astype(self.np_dtype)
        self._buffer_layout = buffer_layout(model)
        with tf.device(device):
            # the objective's own copies of the non-trainable variables: set_buffers assigns them in place, so the
            # traced functions (which read them) need no retracing
            self._buffers = [tf.Variable(tf.identity(v.value), trainable=False) for v in model.non_trainable_variables]
            xs = tf.constant(channels_last(x), dtype=self.tf_dtype)
            #: the run's loss (targets in the form it takes them)
            self.criterion = TFLoss(loss)
            ys = self.criterion.targets(y, self.tf_dtype)
        # the model's output width (a functional model says it; a subclassed one tells by one sample's outputs)
        width = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else model(xs[:1]).shape[-1]
        check_targets(self.criterion.spec, np.asarray(y), int(width))
        self.reduction = BatchReduction(xs, ys, self.batch_size)
        point = tf.TensorSpec([self.dim], self.tf_dtype)
        batch = (tf.TensorSpec([None, *xs.shape[1:]], self.tf_dtype), tf.TensorSpec([None, *ys.shape[1:]], ys.dtype))
        self._batch_evaluation = tf.function(self._loss_and_correct, input_signature=[point, *batch])
        self._batch_gradient = tf.function(self._gradient, input_signature=[point, *batch])
        self._batch_hvp = {
            "forward_over_reverse": tf.function(self._forward_over_reverse, input_signature=[point, point, *batch]),
            "double_backprop": tf.function(self._double_backprop, input_signature=[point, point, *batch]),
        }

    # -- conversion ---------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.layout.size

    @property
    def device_type(self) -> str:
        return (tf.DeviceSpec.from_string(self.device).device_type or "CPU").lower()

    @property
    def n_samples(self) -> int:
        """Samples of the evaluation set (every mean divides by it)."""
        return self.reduction.n_samples

    def from_numpy(self, x: np.ndarray) -> np.ndarray:
        """A copy of ``x`` in the objective's dtype: vectors are host arrays (module docstring)."""
        return np.array(x, dtype=self.np_dtype)

    def to_numpy(self, x: np.ndarray | tf.Tensor) -> np.ndarray:
        return x.numpy() if isinstance(x, tf.Tensor) else np.asarray(x)

    def initial_point(self) -> np.ndarray:
        """The flat parameters the model was built with."""
        return self._initial.copy()

    def set_buffers(self, flat: np.ndarray, layout: list[dict] | str) -> None:
        """Use a checkpoint's buffers (batch-norm moving statistics) for all later evaluations and products."""
        values = unflatten_buffers(flat, layout)
        names = [entry["name"] for entry in self._buffer_layout]
        if set(values) != set(names):
            raise ValueError(f"checkpoint buffers {sorted(values)} do not match the model's {sorted(names)}")
        for name, variable in zip(names, self._buffers, strict=True):
            variable.assign(tf.cast(values[name], variable.dtype))

    def check(self, theta: np.ndarray | tf.Tensor) -> tf.Tensor:
        """``theta`` as a flat tensor of this objective; a ValueError if its shape is not ``(dim,)``."""
        if tuple(theta.shape) != (self.dim,):
            raise ValueError(f"flat vector has shape {tuple(theta.shape)}, expected ({self.dim},)")
        with tf.device(self.device):
            return tf.cast(tf.convert_to_tensor(theta), self.tf_dtype)

    # -- the traced per-batch functions --------------------------------------------------------------------------
    def _logits(self, theta: tf.Tensor, xb: tf.Tensor) -> tf.Tensor:
        pieces = [tf.reshape(piece, shape) for piece, shape in zip(tf.split(theta, self._sizes), self._shapes,
                                                                   strict=True)]
        buffers = [variable.read_value() for variable in self._buffers]
        logits, _ = self.model.stateless_call(pieces, buffers, xb, training=False)
        return logits

    def loss_sum(self, theta: tf.Tensor, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        """The loss summed over the samples of one batch at ``theta`` (differentiable in ``theta``)."""
        return tf.reduce_sum(self.criterion.per_sample(self._logits(theta, xb), yb))

    def _loss_and_correct(self, theta: tf.Tensor, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        """``[loss sum, correct predictions]`` of one batch, float64."""
        logits = self._logits(theta, xb)
        loss = tf.reduce_sum(self.criterion.per_sample(logits, yb))
        correct = self.criterion.correct(logits, yb)
        return tf.stack([tf.cast(loss, tf.float64), correct])

    def _gradient(self, theta: tf.Tensor, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = self.loss_sum(theta, xb, yb)
        return tape.gradient(loss, theta)

    def _forward_over_reverse(self, theta: tf.Tensor, v: tf.Tensor, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        """``d/de grad(L_b)(theta + e v)`` at e = 0: forward mode over the reverse-mode gradient of one batch."""
        with tf.autodiff.ForwardAccumulator(primals=theta, tangents=v) as accumulator:
            gradient = self._gradient(theta, xb, yb)
        return accumulator.jvp(gradient)

    def _double_backprop(self, theta: tf.Tensor, v: tf.Tensor, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        """``grad(grad(L_b) . v)`` at ``theta`` (Pearlmutter's R-operator by reverse mode twice), one batch."""
        with tf.GradientTape() as outer:
            outer.watch(theta)
            gradient = self._gradient(theta, xb, yb)
            directional = tf.reduce_sum(gradient * tf.stop_gradient(v))
        return outer.gradient(directional, theta)

    def tracing_counts(self) -> dict[str, int]:
        """How many times each traced function was traced (1 after any number of calls and batch sizes)."""
        functions = {"evaluate": self._batch_evaluation, "gradient": self._batch_gradient,
                     **{f"hvp_{mode}": fn for mode, fn in self._batch_hvp.items()}}
        return {name: fn.experimental_get_tracing_count() for name, fn in functions.items()}

    # -- the Objective ---------------------------------------------------------------------------------------------
    def evaluate(self, theta: np.ndarray | tf.Tensor) -> Evaluation:
        """Mean loss and accuracy at ``theta``, in inference mode."""
        t = self.check(theta)
        with tf.device(self.device):
            sums = self.reduction.total(lambda xb, yb: self._batch_evaluation(t, xb, yb)).numpy()
        n = self.n_samples
        return Evaluation(loss=float(sums[0]) / n, accuracy=float(sums[1]) / n)

    def loss(self, theta: np.ndarray | tf.Tensor) -> float:
        return self.evaluate(theta).loss

    def grad(self, theta: np.ndarray | tf.Tensor) -> np.ndarray:
        """Gradient of the mean loss (one reverse pass per batch)."""
        t = self.check(theta)
        with tf.device(self.device):
            return self.reduction.mean(lambda xb, yb: self._batch_gradient(t, xb, yb)).numpy()

    def hvp_tensor(self, t: tf.Tensor, v: tf.Tensor, mode: str) -> tf.Tensor:
        """``H(t) @ v`` of the mean loss in ``mode`` as a tensor (``t`` and ``v`` already checked)."""
        batch_hvp = self._batch_hvp[mode]
        with tf.device(self.device):
            return self.reduction.mean(lambda xb, yb: batch_hvp(t, v, xb, yb))

    def hvp(self, theta: np.ndarray | tf.Tensor, v: np.ndarray | tf.Tensor) -> np.ndarray:
        """Exact ``H(theta) @ v`` of the mean loss."""
        return self.hvp_tensor(self.check(theta), self.check(v), self.resolved_mode()).numpy()

    def hvp_operator(self, theta: np.ndarray | tf.Tensor,
                     params: list[str] | tuple[str, ...] | None = None) -> TFHessianOperator:
        """``v -> H(theta) v`` for many products at one point (Lanczos, SLQ): numpy in, numpy out. ``params`` (names
        of the layout): the principal submatrix ``H[S, S]`` of those parameters' entries ``S`` (layout order, ``dim``
        = their size) instead, differentiating only them."""
        return TFHessianOperator(self, theta, params)

    def block_hvp(self, t: tf.Tensor, index: list[int], mode: str) -> Callable[[tf.Tensor], tf.Tensor]:
        """``v -> H[S, S] @ v`` at ``t`` for the flat positions ``index`` = ``S`` (``v`` of their length): the loss as
        a function of ``s`` with ``t[S] = s`` and every other entry held, differentiated in ``s`` only; the
        per-batch product is traced once for all the vectors."""
        # t with t[S] = s, concatenated from contiguous pieces of t and of s (slices and concat have dense
        # derivatives of every order; gather/scatter ones are sparse, which forward-over-reverse cannot take)
        chosen = np.zeros(self.dim, dtype=bool)
        chosen[index] = True
        cuts = np.flatnonzero(np.diff(chosen.astype(np.int8))) + 1
        runs = [(int(a), int(b), bool(chosen[a])) for a, b in zip([0, *cuts], [*cuts, self.dim], strict=True)]

        def embed(s: tf.Tensor) -> tf.Tensor:
            pieces, used = [], 0
            for a, b, in_block in runs:
                pieces.append(s[used:used + b - a] if in_block else t[a:b])
                used += (b - a) if in_block else 0
            return tf.concat(pieces, 0)

        def gradient(s: tf.Tensor, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(s)
                loss = self.loss_sum(embed(s), xb, yb)
            return tape.gradient(loss, s)

        with tf.device(self.device):
            s = tf.gather(t, index)  # the point's entries S: the primal every product differentiates at

        def batch_product(v: tf.Tensor, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
            if mode == "forward_over_reverse":
                with tf.autodiff.ForwardAccumulator(primals=s, tangents=v) as accumulator:
                    g = gradient(s, xb, yb)
                return accumulator.jvp(g)
            with tf.GradientTape() as outer:
                outer.watch(s)
                directional = tf.reduce_sum(gradient(s, xb, yb) * tf.stop_gradient(v))
            return outer.gradient(directional, s)

        traced = tf.function(batch_product)

        def product(v: tf.Tensor) -> tf.Tensor:
            with tf.device(self.device):
                return self.reduction.mean(lambda xb, yb: traced(v, xb, yb))

        return product

    def resolved_mode(self) -> str:
        """The mode products take now: ``hvp_mode``, forward-over-reverse while "auto" is unresolved."""
        return "forward_over_reverse" if self.hvp_mode == "auto" else self.hvp_mode

    def calibrate_hvp(self, theta: np.ndarray | tf.Tensor, block: int = 1) -> dict:
        """Resolve ``hvp_mode="auto"`` to forward-over-reverse (untimed, so every run picks the same) and return the
        record for provenance; a fixed mode is returned as configured."""
        if self.hvp_mode != "auto":
            return {"mode": self.hvp_mode, "chosen_by": "config"}
        self.hvp_mode = "forward_over_reverse"
        self.hvp_calibration = {"mode": self.hvp_mode, "chosen_by": "auto (TensorFlow: forward-over-reverse)"}
        return self.hvp_calibration


class TFHessianOperator:
    """``v -> H(theta) v`` of a :class:`TFObjective` at one point: host vectors in and out, converted at the edge.

    ``block_size`` is 1: :meth:`matmat` multiplies a block row by row (on a CPU a batched product costs as much as
    its vectors one by one)."""

    block_size = 1

    def __init__(self, objective: TFObjective, theta: np.ndarray | tf.Tensor,
                 params: list[str] | tuple[str, ...] | None = None):
        self._objective = objective
        self._theta = tf.identity(objective.check(theta))  # a copy: later changes to the caller's array do not leak
        self.mode = objective.resolved_mode()
        index = None if params is None else parameter_indices(objective.layout, params)
        self.dim = objective.dim if index is None else len(index)
        self._block = None if index is None else objective.block_hvp(self._theta, index, self.mode)

    def __call__(self, v: np.ndarray | tf.Tensor) -> np.ndarray:
        """``H(theta) @ v``: the same values as :meth:`TFObjective.hvp` at the operator's point (``H[S, S] @ v`` of
        the operator's parameters)."""
        objective = self._objective
        if self._block is None:
            return objective.hvp_tensor(self._theta, objective.check(v), self.mode).numpy()
        if tuple(v.shape) != (self.dim,):
            raise ValueError(f"vector has shape {tuple(v.shape)}, expected ({self.dim},)")
        with tf.device(objective.device):
            v = tf.cast(tf.convert_to_tensor(v), objective.tf_dtype)
        return self._block(v).numpy()

    def matmat(self, V: np.ndarray | tf.Tensor) -> np.ndarray:
        """``H(theta)`` applied to every row of ``V`` (g, dim): (g, dim)."""
        dim = self.dim
        if len(V.shape) != 2 or V.shape[1] != dim:
            raise ValueError(f"matmat takes a (g, {dim}) block of row vectors, got {tuple(V.shape)}")
        return np.stack([self(V[i]) for i in range(V.shape[0])])
