"""Quantized Linear layers that stay fast on the CPU.

MLX's CPU `quantized_matmul` does not use BLAS: a 4608×1024 layer took 1.2 s
for 269 prompt rows, where dequantizing the weight and using the dense matmul
took 27 ms. One row (decoding) is the other way round (4.6 vs 11+ ms). So on
the CPU, inputs of several rows go through the dequantized weight.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

DENSE_FROM_ROWS = 4  # below this many rows the quantized kernel is cheaper


class DensePrefillQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        if x.size // x.shape[-1] < DENSE_FROM_ROWS or mx.default_device() != mx.cpu:
            return super().__call__(x)
        w = mx.dequantize(self["weight"], self["scales"], self.get("biases"), group_size=self.group_size,
                          bits=self.bits, mode=self.mode)
        y = x @ w.T.astype(x.dtype)
        return y + self["bias"] if "bias" in self else y


def use_dense_prefill(model: nn.Module) -> None:
    """Make the model's quantized Linear layers take the dense path for prompts.
    They keep their parameters and names; only the forward changes."""
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = DensePrefillQuantizedLinear
