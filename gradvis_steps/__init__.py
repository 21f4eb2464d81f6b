"""gradvis: visualize and measure the optimization surface of neural networks during training.

The package is layered (see ``DESIGN``): step modules at the package root (``python -m
gradvis_steps.<step>``) call the framework-neutral core (``gradvis_steps.core``), which works on flat
parameter vectors plus a :class:`~gradvis_steps.core.layout.ParameterLayout`; framework backends
(``gradvis_steps.backends``) are the only code that imports torch or tensorflow.
"""

__version__ = "0.1.0"
