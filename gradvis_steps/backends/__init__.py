"""Framework backends: the only code that imports a deep-learning framework."""
