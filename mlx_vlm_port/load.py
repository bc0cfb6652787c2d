"""Checkpoint folder or hub id → (model, processor).

config → the family's model skeleton → sanitize() the weights → quantize the
layers the checkpoint says are quantized → load strictly, naming any tensor
that is off → on the CPU, swap in the CPU backend's modules.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .checkpoint import Checkpoint, ModelLoadError, describe_quantization, layer_quantization, resolve
from .processor import Processor

__all__ = ["load", "load_model", "ModelLoadError", "resolve"]


def read_weights(files: list) -> dict:
    weights = {}
    for f in files:
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:
            raise ModelLoadError(f"{f}: cannot read safetensors ({e})") from None
    return weights


def quantize_like_checkpoint(model: nn.Module, section: dict, weights: dict) -> None:
    """Turn into quantized layers exactly those the checkpoint stores quantized,
    with the per-layer bits/group size of its quantization section."""

    def predicate(name: str, module: nn.Module):
        return f"{name}.scales" in weights and {"mode": "affine", "group_size": 64,
                                                **layer_quantization(section, name)}

    nn.quantize(model, class_predicate=predicate)


def check_weights(model: nn.Module, weights: dict, where: str) -> None:
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = [f"{k} {tuple(weights[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise ModelLoadError(f"{where}: weights do not fit the config: " + "; ".join(problems))


def build_model(checkpoint: Checkpoint, *, dtype: mx.Dtype | None = None, bits: int | None = None,
                group_size: int = 64, cpu_backend: bool | None = None, low_memory: bool | None = None
                ) -> nn.Module:
    """The checkpoint's model with its weights. `cpu_backend` (default: when MLX runs
    on the CPU) swaps in backends/cpu's modules; off, the model is plain MLX.
    `low_memory` (CPU backend only): see backends.cpu.hold_float_weights."""
    path, family = checkpoint.path, checkpoint.family
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: no config.json")
    models = family.models()
    try:
        model = models.Model(models.ModelConfig.from_dict({**checkpoint.config, "model_type": family.model_type}))
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path / 'config.json'}: {e}") from None
    files = checkpoint.weight_files()
    weights = model.sanitize(read_weights(files))
    section = checkpoint.quantization
    quantized = any(k.endswith(".scales") for k in weights)
    if bits is not None and quantized:
        raise ValueError(f"{path} is already quantized ({describe_quantization(section, quantized)}): load it "
                         "without `bits`, or quantize its float checkpoint")
    if section and quantized:
        quantize_like_checkpoint(model, section, weights)
    check_weights(model, weights, str(files[0]) if len(files) == 1 else f"{path} ({len(files)} shards)")
    on_cpu = mx.default_device() == mx.cpu
    if dtype is None and on_cpu:  # bf16 arithmetic is emulated and slow on CPUs: compute in float32 there
        dtype = mx.float32
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype else v
                   for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    if bits is not None:
        from .quant import quantize_model

        quantize_model(model, bits=bits, group_size=group_size)
    if on_cpu if cpu_backend is None else cpu_backend:
        from .backends.cpu import use_cpu_backend

        use_cpu_backend(model, low_memory)
    mx.eval(model.parameters())
    model.eval()
    return model


def load_model(path: str | os.PathLike, *, dtype: mx.Dtype | None = None, bits: int | None = None,
               group_size: int = 64, cpu_backend: bool | None = None, low_memory: bool | None = None
               ) -> nn.Module:
    """The model alone (see `load`)."""
    return build_model(Checkpoint.open(path), dtype=dtype, bits=bits, group_size=group_size,
                       cpu_backend=cpu_backend, low_memory=low_memory)


def load(path_or_repo: str | os.PathLike = "LiquidAI/LFM2.5-VL-450M", *, dtype: mx.Dtype | None = None,
         bits: int | None = None, group_size: int = 64, low_memory: bool | None = None
         ) -> tuple[nn.Module, Processor]:
    """Load an LFM2-VL or Idefics3 (SmolVLM) checkpoint: a local folder or a hub id.

    `dtype` casts float weights (default: float32 on the CPU, as stored elsewhere);
    `bits` quantizes a float checkpoint on the fly. On the CPU, a quantized language
    model decodes from float32 copies of its weights (faster, 4 bytes a weight more)
    unless `low_memory` is True; None decides by the memory available, and the
    environment's MLX_VLM_PORT_LOW_MEMORY=1 or 0 overrides that."""
    checkpoint = Checkpoint.open(path_or_repo)
    model = build_model(checkpoint, dtype=dtype, bits=bits, group_size=group_size, low_memory=low_memory)
    try:
        processor = Processor.from_checkpoint(checkpoint)
    except Exception as e:
        raise ModelLoadError(f"{checkpoint.path}: cannot build the processor ({type(e).__name__}: {e})") from None
    return model, processor
