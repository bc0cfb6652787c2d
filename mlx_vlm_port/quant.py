"""Which layers of an LFM2-VL model get quantized, and how."""

from __future__ import annotations

import mlx.nn as nn

# Learned position tables are interpolated per image, so they stay in float.
KEEP_FLOAT = ("vision_tower.embeddings.position_embedding",)


def quantizable(name: str, module: nn.Module, group_size: int) -> bool:
    """Linear and Embedding layers whose input width splits into whole groups."""
    if not isinstance(module, (nn.Linear, nn.Embedding)) or name in KEEP_FLOAT:
        return False
    return module.weight.shape[-1] % group_size == 0


def quantize_model(model: nn.Module, *, bits: int, group_size: int = 64, vision_bits: int | None = None,
                   overrides: dict | None = None) -> dict:
    """Quantize in place; returns the `quantization` config section describing it.

    `vision_bits` applies to the vision tower and projector (0 keeps them in float);
    `overrides` maps layer names to bits for mixed recipes."""
    overrides = overrides or {}
    vision_bits = bits if vision_bits is None else vision_bits
    section: dict = {"group_size": group_size, "bits": bits}

    def predicate(name: str, module: nn.Module):
        if not quantizable(name, module, group_size):
            return False
        b = overrides.get(name, vision_bits if not name.startswith("language_model.") else bits)
        if not b:
            return False
        if b != bits:
            section[name] = {"group_size": group_size, "bits": b}
            return {"group_size": group_size, "bits": b}
        return True

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    return section
