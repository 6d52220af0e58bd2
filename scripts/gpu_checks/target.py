"""Where the device checks run: the CUDA GPU, or, in a rehearsal, the CPU at toy sizes.

A rehearsal (`device_check.py --rehearse`, which sets LOCALAI_CHECK_REHEARSAL=1 and runs the
Triton kernels under TRITON_INTERPRET=1) walks every section's code path on a machine without
a GPU, so a broken check is found before the few minutes of GPU time are spent. Its numbers
mean nothing; only whether each part ran. CUDA-only steps (graph capture, CUDA events) are
left out of a rehearsal and the sections say so in the report.
"""

from __future__ import annotations

import os

REHEARSAL = os.environ.get("LOCALAI_CHECK_REHEARSAL") == "1"
DEVICE = "cpu" if REHEARSAL else "cuda"


def sized(real, rehearsal):
    """`real` on the GPU, `rehearsal` (a toy size) in a rehearsal."""
    return rehearsal if REHEARSAL else real


def missing_device() -> str | None:
    """Why the checks cannot run here, or None."""
    import torch

    if REHEARSAL or torch.cuda.is_available():
        return None
    return "no CUDA GPU (run with --rehearse to walk the checks on the CPU)"


def device_name() -> str:
    import torch

    return "cpu (rehearsal)" if REHEARSAL else torch.cuda.get_device_name(0)


def synchronize() -> None:
    import torch

    if not REHEARSAL:
        torch.cuda.synchronize()


def empty_cache() -> None:
    import torch

    if not REHEARSAL:
        torch.cuda.empty_cache()


def reset_peak_memory() -> None:
    import torch

    if not REHEARSAL:
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int:
    """Peak allocated device memory since the last reset (0 in a rehearsal)."""
    import torch

    return 0 if REHEARSAL else torch.cuda.max_memory_allocated()


def allocated_bytes() -> int:
    import torch

    return 0 if REHEARSAL else torch.cuda.memory_allocated()
