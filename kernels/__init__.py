"""4-bit matmul kernels; they know nothing about models (installed as localai.kernels)."""
