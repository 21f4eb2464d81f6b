"""Grid points without the input layer's forward pass: on a plane its output is affine in the coordinates.

Every point of a landscape (paper Algorithm 1) runs the model on the same evaluation inputs. A convolution or
fully connected layer applied directly to those inputs computes ``f(x; W, b)``, which is linear in ``(W, b)``.
On the plane ``theta = center + sum_k a_k d_k`` (eq. 1) its output is therefore
``f(x; W_c, b_c) + sum_k a_k f(x; dW_k, db_k)``: with the ``1 + K`` outputs computed once per set of directions,
the layer costs ``K`` axpy updates per point instead of a convolution (for LeNet on the digits, 15 % of a
forward pass becomes 2 %). The result equals the layer's own output up to float rounding.

Only layers whose type is exactly ``nn.Linear``/``nn.ConvNd`` (no subclass with its own forward), whose input is
the objective's batch tensor itself (no preprocessing before them), that run once per forward pass and whose
parameters are all trainable entries of the flat vector take the shortcut; everything else runs as written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.layout import ParameterLayout

AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: the precomputed layer outputs (center and one per direction, over the whole evaluation set) may hold at most
#: this many numbers (64 MiB in float32); larger evaluation sets run the layer as usual
PLANE_BUFFER_ELEMENTS = 1 << 24


def _layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``layer``'s output on ``x`` with the given weight and bias (padding mode, stride, ... of the layer)."""
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)


@dataclass
class _InputLayer:
    name: str
    layer: nn.Module
    weight: slice  # of the flat vector
    weight_shape: torch.Size
    bias: slice | None
    bias_shape: torch.Size | None

    def output(self, x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        w = flat[self.weight].view(self.weight_shape)
        b = flat[self.bias].view(self.bias_shape) if self.bias is not None else None
        return _layer_output(self.layer, x, w, b)


def find_input_layers(module: nn.Module, layout: ParameterLayout, batch: torch.Tensor) -> list[_InputLayer]:
    """The affine layers of ``module`` that take ``batch`` itself as their only input, once per forward pass
    (found by running one forward pass with hooks)."""
    candidates = {name: sub for name, sub in module.named_modules()
                  if type(sub) in AFFINE_LAYERS and "forward" not in vars(sub)}
    calls: dict[str, list[bool]] = {name: [] for name in candidates}

    def recorder(name: str) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[name].append(len(args) == 1 and not kwargs and args[0] is batch)
        return hook

    handles = [sub.register_forward_pre_hook(recorder(name), with_kwargs=True) for name, sub in candidates.items()]
    try:
        with torch.inference_mode():
            module(batch)
    finally:
        for handle in handles:
            handle.remove()
    specs = {spec.name: spec for spec in layout}
    found = []
    for name, sub in candidates.items():
        if calls[name] != [True]:
            continue
        weight = specs.get(f"{name}.weight")
        bias = specs.get(f"{name}.bias") if sub.bias is not None else None
        if weight is None or (sub.bias is not None and bias is None):  # shared or frozen parameters
            continue
        found.append(_InputLayer(name, sub, weight.slice, torch.Size(weight.shape),
                                 bias.slice if bias is not None else None,
                                 torch.Size(bias.shape) if bias is not None else None))
    return found


class PlaneShortcut:
    """Serves the input layers' outputs on a plane from precomputed pieces; see the module docstring.

    ``prepare(center, directions)`` computes (or reuses) the pieces, ``set_point(coefficients)`` selects the point,
    and while ``installed()`` is active each input layer's forward returns ``base + sum_k a_k piece_k``.
    """

    def __init__(self, module: nn.Module, layout: ParameterLayout, batches: Sequence[torch.Tensor],
                 max_elements: int | None = None):
        self.batches = list(batches)
        self.layers = find_input_layers(module, layout, self.batches[0]) if self.batches else []
        self.max_elements = max_elements
        with torch.inference_mode():  # numbers one vector's pieces hold: shapes only, fixed for the objective
            n_samples = sum(len(xb) for xb in self.batches)
            self._piece_elements = sum(layer.layer(self.batches[0][:1]).numel() * n_samples for layer in self.layers)
        self._plane: tuple[torch.Tensor, ...] = ()  # center and directions the pieces were made for
        self._versions: tuple[int, ...] = ()
        self._pieces: list[list[list[torch.Tensor]]] = []  # [layer][batch] -> [base, piece_1, ..., piece_K]
        self._scratch: list[list[torch.Tensor]] = []
        self._coefficients: list[float] = []

    def prepare(self, center: torch.Tensor, directions: Sequence[torch.Tensor]) -> bool:
        """Make the pieces for this plane (kept while ``center`` and ``directions`` are the same, unmodified
        tensors); False when there is no input layer or the pieces would exceed the element budget."""
        if not self.layers:
            return False
        plane = (center, *directions)
        versions = tuple(v._version for v in plane)  # bumped by every in-place change of the tensor
        same = len(plane) == len(self._plane) and all(a is b for a, b in zip(plane, self._plane, strict=False))
        if same and versions == self._versions:
            return True
        self._plane, self._versions, self._pieces, self._scratch = (), (), [], []
        budget = PLANE_BUFFER_ELEMENTS if self.max_elements is None else self.max_elements
        if len(plane) * self._piece_elements > budget:
            return False
        with torch.inference_mode():
            for layer in self.layers:
                pieces = [[layer.output(xb, v) for v in plane] for xb in self.batches]
                self._pieces.append(pieces)
                self._scratch.append([torch.empty_like(p[0]) for p in pieces])
        self._plane, self._versions = plane, versions
        return True

    def set_point(self, coefficients: Sequence[float]) -> None:
        """The point ``center + sum_k coefficients[k] * directions[k]`` the next forward passes evaluate."""
        self._coefficients = list(coefficients)

    def batch_outputs(self, batch: int, coefficients: torch.Tensor) -> list[torch.Tensor]:
        """Each input layer's output on evaluation batch ``batch`` at the ``P`` points ``center + coefficients @
        directions`` at once (``coefficients``: ``(P, K)``), as ``(P, *output shape)`` tensors: one matrix
        product per layer (for :mod:`.batched_points`). Only after :meth:`prepare` returned True."""
        outputs = []
        count = coefficients.shape[0]
        for pieces in self._pieces:
            base, *rest = pieces[batch]
            if rest:
                flat = torch.addmm(base.reshape(1, -1), coefficients, torch.stack(rest).reshape(len(rest), -1))
            else:
                flat = base.reshape(1, -1).repeat(count, 1)
            outputs.append(flat.view(count, *base.shape))
        return outputs

    def _forward(self, index: int, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward pass that replaces ``layer``'s while installed."""
        original = type(layer).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            for b, xb in enumerate(self.batches):
                if x is xb:
                    base, *pieces = self._pieces[index][b]
                    out = self._scratch[index][b]
                    if not pieces:
                        return out.copy_(base)
                    # the layer's output at the point (eq. 1 pushed through the affine layer)
                    torch.add(base, pieces[0], alpha=self._coefficients[0], out=out)
                    for a, piece in zip(self._coefficients[1:], pieces[1:], strict=True):
                        out.add_(piece, alpha=a)
                    return out
            return original(layer, x)  # not one of the evaluation batches: the layer as written

        return forward

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route the input layers' forward passes to the pieces (restored on exit, also after an error)."""
        for index, layer in enumerate(self.layers):
            layer.layer.forward = self._forward(index, layer.layer)
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.layer.forward
