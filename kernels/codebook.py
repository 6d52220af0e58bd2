"""The 16 reconstruction levels every 4-bit kernel decodes codes with.

They are the Lloyd-Max levels for a unit Gaussian (localai.quant.codebook explains why);
the kernels only need the table: code i (one nibble) -> LEVELS_4BIT[i].
"""

# Lloyd-Max reconstruction levels for N(0, 1), ascending; code i -> LEVELS[i]. MSE 0.00950.
LEVELS_4BIT = (
    -2.7326, -2.0690, -1.6180, -1.2562, -0.9423, -0.6568, -0.3880, -0.1284,
    0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326,
)
