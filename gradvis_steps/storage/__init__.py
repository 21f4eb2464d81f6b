"""Storage in open formats (HDF5) readable without gradvis."""
