"""gradvis from Python: the Hessian and the loss landscape of your own model on your own data, in a few lines.

    from gradvis_steps.api import directions, hessian, landscape

    h = hessian(model, (x, y), "cross_entropy")        # a torch nn.Module or a Keras model
    h.eigenvalues(top=3)                               # Ritz values, vectors, true residuals
    h.trace()                                          # Hutchinson estimate and its standard error
    h.density().plot(); h.density().save("spectra.h5") # SLQ density, the spectrum step's file format
    surface = landscape(model, (x, y), "cross_entropy", directions.random(model, seed=0), resolution=25)
    surface.plot(); surface.save("landscape.h5")       # the landscape step's file format

Every figure is computed by the functions the workflow's steps use, with the steps' defaults, so a result of the API
equals the step's on the same model, data and settings. ``data`` is ``(x, y)`` arrays or an iterable of ``(x, y)``
batches; ``loss`` any loss the backends support (:data:`gradvis_steps.losses.LOSSES`). Storage imports live in
:mod:`.io` alone; no module here imports a framework (the backends registry does, for the model it is given).
"""

from __future__ import annotations

from . import directions
from .directions import DirectionSet
from .hessian import Density, Eigenpairs, Hessian, Trace, hessian
from .landscape import Landscape, landscape

__all__ = ["DirectionSet", "Density", "Eigenpairs", "Hessian", "Landscape", "Trace", "directions", "hessian",
           "landscape"]
