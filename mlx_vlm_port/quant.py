"""Which layers of a model get quantized, and how.

Decided by module type (every `nn.Linear` and `nn.Embedding`) and by explicit
module paths its family lists (families.py: `keep_float`, `vision_prefixes`,
`sensitive_paths`); never by substrings of names. Norms and conv kernels are
other module types, so they stay in float without being listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from .families import family

# Mixed recipes: name → (bits of most layers, bits of the layers the model lists as sensitive).
RECIPES = {f"mixed_{lo}_{hi}": (lo, hi) for lo in (4, 5, 6) for hi in (5, 6, 8) if lo < hi}


@dataclass(frozen=True)
class LayerChoice:
    path: str
    vision: bool  # vision tower or projector (else language model)
    shape: tuple[int, int]  # (out, in) of the float weight; groups run along `in`
    bits: int | None  # None: kept in float
    group_size: int
    why_float: str = ""

    @property
    def weights(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class Plan:
    bits: int  # the default of the `quantization` section (the language model's base bits)
    group_size: int
    layers: list[LayerChoice]
    recipe: str | None = None
    always_float: tuple[str, ...] = ()  # what the model keeps float besides norms and convs (why, in words)

    @property
    def quantized(self) -> list[LayerChoice]:
        return [c for c in self.layers if c.bits is not None]

    @property
    def kept_float(self) -> list[LayerChoice]:
        return [c for c in self.layers if c.bits is None]

    def config(self) -> dict:
        """The `quantization` section of config.json, as mlx-vlm / mlx-lm write and read it.

        A layer gets its own entry when it differs from the default, and also when
        its weight has a size that is not a multiple of 64: mlx-vlm's loader skips
        such layers unless the config names them."""
        section: dict = {"group_size": self.group_size, "bits": self.bits, "mode": "affine"}
        for c in self.quantized:
            if c.bits != self.bits or c.group_size != self.group_size or c.weights % 64:
                section[c.path] = {"group_size": c.group_size, "bits": c.bits}
        return section


def _weight_shape(module: nn.Module) -> tuple[int, int]:
    rows, cols = module.weight.shape
    return int(rows), int(cols)


def plan_quantization(model: nn.Module, *, bits: int | None, group_size: int = 64,
                      vision_bits: int | None = None, recipe: str | None = None) -> Plan:
    """Choose bits for every Linear/Embedding. `vision_bits` None: as the language
    model's base bits; 0: vision tower and projector stay in float."""
    high: int | None = None
    if recipe is not None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
        low, high = RECIPES[recipe]
        if bits not in (None, low):
            raise ValueError(f"recipe {recipe} quantizes to {low}/{high} bits; it cannot be combined with bits={bits}")
        bits = low
    if bits is None:
        raise ValueError("give bits or a recipe")
    vision_bits = bits if vision_bits is None else vision_bits
    rules = family(model.config.model_type)
    leaves = {path: m for path, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Embedding)) and path not in rules.keep_float}
    high_paths = rules.sensitive_paths(model) if high is not None else set()
    missing = high_paths - set(leaves)
    if missing:  # a recipe keyed on names the model does not have would silently do nothing
        raise ValueError(f"recipe {recipe}: the model has no layer(s) {', '.join(sorted(missing))}")
    layers = []
    for path in sorted(leaves):
        vision = path.startswith(rules.vision_prefixes)
        shape = _weight_shape(leaves[path])
        b = high if path in high_paths else (vision_bits if vision else bits)
        why = ""
        if not b:
            b, why = None, "vision bits: none"
        elif shape[1] % group_size:
            b, why = None, f"width {shape[1]} is not a multiple of the group size {group_size}"
        layers.append(LayerChoice(path, vision, shape, b, group_size, why))
    return Plan(bits, group_size, layers, recipe, tuple(rules.keep_float.values()))


def apply_plan(model: nn.Module, plan: Plan,
               progress: Callable[[int, int, str], None] | None = None) -> None:
    """Quantize in place, one layer at a time (evaluated as it goes, so progress is real)."""
    todo = {c.path: c for c in plan.quantized}
    done = 0

    def convert(path: str, module: nn.Module) -> nn.Module:
        nonlocal done
        choice = todo.get(path)
        if choice is None:
            return module
        q = module.to_quantized(group_size=choice.group_size, bits=choice.bits, mode="affine")
        mx.eval(q.parameters())
        done += 1
        if progress is not None:
            progress(done, len(todo), path)
        return q

    leaves = tree_map_with_path(convert, model.leaf_modules(), is_leaf=nn.Module.is_module)
    model.update_modules(leaves)


def quantize_model(model: nn.Module, *, bits: int | None, group_size: int = 64, vision_bits: int | None = None,
                   recipe: str | None = None,
                   progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Quantize in place; returns the `quantization` config section describing it."""
    plan = plan_quantization(model, bits=bits, group_size=group_size, vision_bits=vision_bits, recipe=recipe)
    apply_plan(model, plan, progress)
    return plan.config()


def dequantize_model(model: nn.Module, dtype: mx.Dtype | None = None) -> int:
    """Replace every quantized Linear/Embedding by its float equivalent; returns how many.

    Used to re-quantize a quantized checkpoint, and by the quality report, where a
    dequantized float matmul computes the same function far faster than MLX's
    CPU quantized kernel."""
    count = 0

    def expand(path: str, m: nn.Module) -> nn.Module:
        nonlocal count
        if not isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return m
        w = mx.dequantize(m.weight, m.scales, m.get("biases"), group_size=m.group_size, bits=m.bits, mode=m.mode)
        if dtype is not None:
            w = w.astype(dtype)
        if isinstance(m, nn.QuantizedEmbedding):
            out = nn.Embedding(*w.shape)
        else:
            out = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
            if "bias" in m:
                out.bias = m.bias if dtype is None else m.bias.astype(dtype)
        out.weight = w
        mx.eval(out.parameters())
        count += 1
        return out

    model.update_modules(tree_map_with_path(expand, model.leaf_modules(), is_leaf=nn.Module.is_module))
    return count
