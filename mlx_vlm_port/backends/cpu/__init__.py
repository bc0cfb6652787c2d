"""The CPU backend: numpy softmax/GELU/SiLU, one-row products split over both
cores, quantized prompts through the dense matmul (layers.py), and the buffer
cache policy. `load()` calls `use_cpu_backend` when MLX runs on the CPU.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .layers import SWAPS

CACHE_BYTES = 64 << 20  # freed buffers MLX keeps for reuse on the CPU (its default there: 32 MB)


def use_cpu_backend(model: nn.Module) -> None:
    """Swap the CPU subclasses into `model` (parameters and names unchanged) and keep
    more freed buffers. Call again after quantizing: new layers arrive as MLX's."""
    for _, module in model.named_modules():
        if type(module) in SWAPS:
            module.__class__ = SWAPS[type(module)]
    keep_freed_buffers()


def keep_freed_buffers() -> None:
    """With MLX's 32 MB CPU cache, larger freed buffers go back to the OS and are
    page-faulted in again: 591-634 MB of faults per float32 512² vision pass here,
    63-106 MB with 64 MB (1.9-2.6 s against 1.6-2.1 s a pass). 256 MB also saved
    the 4-bit path's faults but raised its peak RSS by 40-50 MB (single runs). Raising
    it for the vision pass only gave a higher float32 peak RSS (1972 against 1949 MB,
    3 runs each). Raise it for the process; never lower a larger limit."""
    previous = mx.set_cache_limit(CACHE_BYTES)
    if previous > CACHE_BYTES:
        mx.set_cache_limit(previous)
