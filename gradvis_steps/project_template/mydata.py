"""Your own dataset for gradvis (written by ``gradvis init --example``): a loader ``(**options)`` returning a dict
with ``x_train``, ``y_train`` (and optionally ``x_test``, ``y_test``, ``num_classes``), which the config names as
``{name: custom, entry_point: "mydata:blobs", ...}``.
"""

import numpy as np


def blobs(n: int = 128, features: int = 4, classes: int = 3, seed: int = 0) -> dict:
    """``n`` points around ``classes`` Gaussian centres in ``features`` dimensions (the same points for a seed)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, size=(classes, features))
    labels = np.arange(n) % classes
    points = centres[labels] + rng.normal(0.0, 1.0, size=(n, features))
    return {"x_train": points.astype(np.float32), "y_train": labels.astype(np.int64), "num_classes": classes}
