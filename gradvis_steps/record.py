"""Record your own training run as a gradvis trajectory, from your loop or from Keras ``model.fit``.

PyTorch (:class:`Recorder`, ``gradvis_steps.backends.torch.recorder``)::

    from gradvis_steps.record import Recorder

    with Recorder("runs/mine/trajectory.h5", model, model_spec="mynets:resnet", dataset_spec="mydata:load",
                  loss="cross_entropy", every=1, optimizer=opt) as rec:
        step = 0
        for epoch in range(epochs):
            for x, y in loader:
                rec.record(step, epoch=epoch)      # theta_step, before the forward pass
                loss = F.cross_entropy(model(x), y)
                rec.batch_loss(loss.item())        # the loss of the batch the step from theta_step uses
                opt.zero_grad(); loss.backward(); opt.step()
                step += 1
        rec.record(step, force=True)               # the final point (stored whatever every is)

or ``rec.attach(opt)`` once, before the loop, to record after every ``every``-th ``opt.step()`` (then set
``rec.epoch = epoch`` at each epoch's start, and give losses with ``rec.batch_loss``; ``rec.close()`` adds the final
point).

Keras (:class:`KerasRecorder`, ``gradvis_steps.backends.tensorflow.recorder``), a ``keras.callbacks.Callback``::

    model.compile(optimizer=..., loss=loss_fn, metrics=[BatchLoss(loss_fn)])   # BatchLoss: each batch's own loss
    model.fit(x, y, callbacks=[KerasRecorder("runs/mine/trajectory.h5", model_spec="mynets:keras_net",
                                             dataset_spec="mydata:load", batch_loss_key="batch_loss")])

(without ``batch_loss_key`` the losses are not known: Keras' ``logs["loss"]`` is the epoch's running mean.)

Importing this module imports neither torch nor TensorFlow: each class loads its framework when first used.
"""

from __future__ import annotations

from typing import Any

#: the public names and the framework whose backend offers each (``Backend.recording``)
_FRAMEWORK = {"Recorder": "torch", "describe_optimizer": "torch", "KerasRecorder": "tensorflow",
              "BatchLoss": "tensorflow"}


def __getattr__(name: str) -> Any:
    """``Recorder`` (torch) or ``KerasRecorder`` (TensorFlow), from their backend through the registry at the first
    use (a one-line error when the framework is not installed)."""
    if name not in _FRAMEWORK:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .backends import backend

    return backend(_FRAMEWORK[name]).recording[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *_FRAMEWORK])
