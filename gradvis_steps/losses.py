"""The losses a run can use, framework-neutral: their names, their spec, and what they ask of the targets.

A run config's ``loss`` is a spec dict: ``{"name": "cross_entropy"}`` (the default: a config without ``loss`` means
it, so older trajectories read the same), ``{"name": "mse"}``, ``{"name": "bce_with_logits"}``, or
``{"name": "custom", "entry_point": "module:function", **options}``. Each backend turns a spec into its own per-sample
loss (:mod:`gradvis_steps.backends.torch.losses`, :mod:`gradvis_steps.backends.tensorflow.losses`); every mean is
the sum of per-sample losses divided by the number of samples.

Per sample, for outputs ``z`` (the model's last layer, ``num_classes`` wide) and target ``y``:

* ``cross_entropy``: ``logsumexp(z) - z[y]``, ``y`` an integer class in ``[0, num_classes)``; accuracy: argmax.
* ``mse``: ``mean_j (z_j - y_j)^2`` over the output width (``torch.nn.MSELoss``/``keras.losses.MeanSquaredError``
  averaged per sample); ``y`` float, ``(n,)`` for one output or ``(n, d)`` for ``d``; accuracy NaN (not a
  classification).
* ``bce_with_logits``: ``mean_j softplus(z_j) - y_j z_j``, ``y`` integer 0/1 labels, ``(n,)`` for one output (binary,
  ``num_classes: 1``) or ``(n, d)`` for ``d`` independent labels; accuracy: the share of labels with ``(z > 0) == y``.
* ``custom``: ``function(outputs, targets, **options)`` in the run's framework returns the ``(n,)`` per-sample
  losses; accuracy NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .entry_points import check_options, load_entry_point

#: the loss names a spec may give
LOSSES = ("cross_entropy", "mse", "bce_with_logits", "custom")
#: the loss a run config without ``loss`` uses
DEFAULT_LOSS = "cross_entropy"
#: losses whose targets are classes, so that accuracy means something
CLASSIFICATION_LOSSES = ("cross_entropy", "bce_with_logits")


def normalize(spec: dict[str, Any] | str | None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run-config form ``{"name": ..., **options}`` of a name or spec (None: the default), ``options`` merged in;
    checked (:func:`check`)."""
    if spec is None:
        spec = {"name": DEFAULT_LOSS}
    elif isinstance(spec, str):
        spec = {"name": spec}
    elif isinstance(spec, dict):
        spec = dict(spec)
    else:
        raise ValueError(f"loss {spec!r} is a {type(spec).__name__}; expected a name or a mapping with 'name'")
    spec.update(options or {})
    return check(spec)


def check(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` if it names a known loss with fitting options (a custom entry point that imports), else a ValueError
    of one line naming the bad value and what is accepted."""
    name = spec.get("name")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; accepted: {', '.join(LOSSES)}")
    options = {k: v for k, v in spec.items() if k != "name"}
    if name == "custom":
        entry = options.pop("entry_point", None)
        if not entry:
            raise ValueError("loss 'custom' needs entry_point: 'module:function' (returning per-sample losses from "
                             "outputs and targets)")
        # a ValueError naming the entry point when it does not import, or when it takes no such options
        check_options(load_entry_point(entry), options, None, None, what=f"loss {entry!r}")
    elif options:
        raise ValueError(f"loss {name!r} takes no options, got {sorted(options)}")
    return dict(spec)


class LossSpec:
    """A checked loss spec as a backend's loss class starts from: its name, whether it classifies, and for a custom
    loss the user's function with its options bound (``self.custom(outputs, targets)``; None otherwise)."""

    def __init__(self, spec: dict[str, Any] | str | None = None):
        self.spec = normalize(spec)
        self.name = self.spec["name"]
        self.classification = is_classification(self.name)
        self.custom = None
        if self.name == "custom":
            options = {k: v for k, v in self.spec.items() if k not in ("name", "entry_point")}
            function = load_entry_point(self.spec["entry_point"])
            self.custom = lambda z, y: function(z, y, **options)


def loss_of(config: dict[str, Any]) -> dict[str, Any]:
    """The loss spec of a run config (a trajectory's ``config``): its ``loss``, or cross-entropy when it has none."""
    return normalize(config.get("loss"))


def is_classification(spec: dict[str, Any] | str) -> bool:
    """Whether the loss takes class targets, so that accuracy is meaningful (else accuracy is NaN)."""
    name = spec if isinstance(spec, str) else spec.get("name")
    return name in CLASSIFICATION_LOSSES


def check_targets(spec: dict[str, Any], targets: np.ndarray, num_classes: int) -> None:
    """A ValueError of one line where the targets do not fit the loss: float targets for a classification loss,
    or targets whose width is not the model's output width (``num_classes``) for mse and bce_with_logits."""
    name = spec["name"]
    targets = np.asarray(targets)
    integer = np.issubdtype(targets.dtype, np.integer) or targets.dtype == np.bool_
    if is_classification(name) and not integer:
        raise ValueError(f"loss {name!r} needs integer class targets, got {targets.dtype} targets (regression "
                         "targets need a regression loss, e.g. mse)")
    if name == "cross_entropy" and targets.ndim != 1:
        raise ValueError(f"loss 'cross_entropy' needs one class per sample, got targets of shape {targets.shape}")
    if name in ("mse", "bce_with_logits"):
        if targets.ndim not in (1, 2):
            raise ValueError(f"loss {name!r} needs targets of shape (n,) or (n, d), got {targets.shape}")
        width = 1 if targets.ndim == 1 else targets.shape[1]
        if width != num_classes:
            raise ValueError(f"loss {name!r}: targets of shape {targets.shape} need a model output width "
                             f"(num_classes) of {width}, the dataset says {num_classes}")
    if name == "bce_with_logits" and targets.size and not np.isin(targets, (0, 1)).all():
        raise ValueError(f"loss 'bce_with_logits' needs 0/1 labels, got values in [{targets.min()}, {targets.max()}]")


def target_width(targets: np.ndarray) -> int:
    """The output width targets ask for: 1 for ``(n,)``, ``d`` for ``(n, d)``."""
    targets = np.asarray(targets)
    return 1 if targets.ndim == 1 else int(np.prod(targets.shape[1:]))


__all__ = ["CLASSIFICATION_LOSSES", "DEFAULT_LOSS", "LOSSES", "check", "check_targets", "is_classification",
           "loss_of", "normalize", "target_width"]
