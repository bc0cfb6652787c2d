"""The CPU backend: numpy softmax/GELU/SiLU, one-row products split over both
cores, quantized prompts through the dense matmul, float32 copies of quantized
language-model weights (layers.py), LFM2's decoding step in numpy (decode.py),
and the buffer cache policy. `load()` calls
`use_cpu_backend` when MLX runs on the CPU.
"""

from __future__ import annotations

import os
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...memory import available_memory
from .layers import SWAPS

CACHE_BYTES = 64 << 20  # freed buffers MLX keeps for reuse on the CPU (its default there: 32 MB)
FLOAT_COPY_SHARE = 0.5  # float copies are held when they take at most this share of the available memory


def use_cpu_backend(model: nn.Module, low_memory: bool | None = None) -> int:
    """Swap the CPU subclasses into `model` (parameters and names unchanged), keep
    more freed buffers, and (unless `low_memory`) give quantized language-model
    layers float32 copies (see `hold_float_weights`); returns the copies' bytes.
    Call again after quantizing: new layers arrive as MLX's."""
    for _, module in model.named_modules():
        if type(module) in SWAPS:
            module.__class__ = SWAPS[type(module)]
    keep_freed_buffers()
    return hold_float_weights(model, low_memory)


def _quantized_lm_layers(model: nn.Module) -> list:
    lm = model["language_model"] if "language_model" in model else model
    return [m for _, m in lm.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) and m["scales"].dtype == mx.float32]


def hold_float_weights(model: nn.Module, low_memory: bool | None = None) -> int:
    """Give each quantized layer of the language model a float32 copy of its weight
    (`_dense`: not a parameter, never saved), which its one-row products and prompts
    then use: on the CPU that decodes faster than the packed weights (layers.py).
    Costs 4 bytes per weight on top of the packed ones (450M: ~1.4 GB). `low_memory`
    None decides by memory: copies only if they take at most FLOAT_COPY_SHARE of the
    available memory; MLX_VLM_PORT_LOW_MEMORY=1 (or 0) overrides that. Returns bytes held."""
    if low_memory is None and os.environ.get("MLX_VLM_PORT_LOW_MEMORY", "") in ("0", "1"):
        low_memory = os.environ["MLX_VLM_PORT_LOW_MEMORY"] == "1"
    layers = [m for m in _quantized_lm_layers(model) if "_dense" not in m]
    need = sum(m["scales"].size * m.group_size * 4 for m in layers)
    if low_memory is None:
        low_memory = need > FLOAT_COPY_SHARE * available_memory()
    if low_memory or not layers:
        return 0
    from concurrent.futures import ThreadPoolExecutor

    def start(m):  # numpy views taken here: MLX evaluates (weights load lazily) on this thread's stream
        if not _numpy_unpacks(m):
            return None
        return pool.submit(_unpacked, m.bits, m.group_size, *(np.asarray(m[k]) for k in ("weight", "scales", "biases")))

    with ThreadPoolExecutor(2) as pool:  # numpy releases the GIL
        ahead = [start(m) for m in layers[:2]]  # at most two layers' float temporaries at a time
        for i, m in enumerate(layers):
            part = ahead.pop(0)
            if i + 2 < len(layers):
                ahead.append(start(layers[i + 2]))
            m["_dense"] = mx.array(part.result()) if part else mx.dequantize(
                m["weight"], m["scales"], m.get("biases"), group_size=m.group_size, bits=m.bits, mode=m.mode)
            mx.eval(m["_dense"])
    return need


def _numpy_unpacks(m) -> bool:
    """4- and 8-bit affine layers are unpacked by numpy (2.5x MLX's CPU dequantize here, same values)."""
    return m.mode == "affine" and m.bits in (4, 8) and "biases" in m and sys.byteorder == "little"


def _unpacked(bits: int, group_size: int, packed: np.ndarray, scales: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """(out, in·bits/32) uint32 words → (out, in) float32: q · scale + bias per group."""
    q = packed.view(np.uint8)  # little-endian words: value j is byte j (8-bit) or nibble j (4-bit)
    if bits == 4:
        q = np.stack([q & 15, q >> 4], axis=-1)  # low nibble first
    rows = q.shape[0]
    w = q.reshape(rows, -1, group_size).astype(np.float32)  # (out, groups, group_size)
    w *= scales[..., None]
    w += biases[..., None]
    return w.reshape(rows, -1)


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
