"""Framework-neutral core: linear algebra, directions, geometry, grids."""
