"""TurboQuant 4-bit weights (random rotation + Lloyd-Max codebook) and baselines."""
