"""The one place the Python API imports storage and plotting, so that a move of either changes this file only.

Storage (HDF5, ``h5py``) is imported here at once; plotting (matplotlib) only when a figure is asked for
(:func:`plotting`), so computing results never imports matplotlib.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..storage.directions import Directions, load_directions_file, save_directions
from ..storage.landscape import save_landscape
from ..storage.spectra import CheckpointSpectrum, Spectra, save_spectra


def plotting() -> SimpleNamespace:
    """The figure functions the API's ``plot()`` methods call (imports matplotlib at the first call)."""
    from ..render.landscape_plots import plot_contour, plot_line, plot_surface
    from ..render.spectrum_plots import density_title, plot_density

    return SimpleNamespace(plot_contour=plot_contour, plot_line=plot_line, plot_surface=plot_surface,
                           plot_density=plot_density, density_title=density_title)


__all__ = ["CheckpointSpectrum", "Directions", "Spectra", "load_directions_file", "plotting", "save_directions",
           "save_landscape", "save_spectra"]
