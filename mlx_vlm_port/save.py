"""Write a model as a complete checkpoint folder in the mlx-vlm layout.

Tensor names are our module paths (`vision_tower.*`, `multi_modal_projector.*`,
`language_model.model.*`), conv kernels in MLX layout, quantized layers as
`weight` (packed uint32) + `scales` + `biases`, the `quantization` section as
mlx-vlm writes it. That is what the official LiquidAI/*-MLX-* repos contain,
so both this port's `load()` and `mlx_vlm.utils.load()` read the result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .checkpoint import HUB_PATTERNS, INDEX, with_quantization
from .families import family

MAX_SHARD_BYTES = 5 << 30  # mlx-vlm's shard size
# Side files (tokenizer, processor, chat template, generation settings): the patterns
# `load()` fetches from the hub, minus the weights and the files this module writes itself.
SIDE_PATTERNS = tuple(p for p in HUB_PATTERNS if p != "*.safetensors")
NOT_COPIED = {"config.json", INDEX}


def shard(weights: dict[str, mx.array], max_bytes: int) -> list[dict[str, mx.array]]:
    """Split in name order into shards of at most `max_bytes` (a bigger tensor gets its own)."""
    shards: list[dict] = [{}]
    size = 0
    for name in sorted(weights):
        nbytes = weights[name].nbytes
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = weights[name]
        size += nbytes
    return shards


def output_config(config: dict, quantization: dict | None) -> dict:
    """The source config with our quantization section (or none) and the fix-ups
    its family needs for mlx-vlm to read it."""
    out = with_quantization(config, quantization)
    family(out.get("model_type")).fix_saved_config(out)
    return out


def copy_side_files(src_folder: Path, dst_folder: Path) -> list[str]:
    copied = []
    for pattern in SIDE_PATTERNS:
        for f in sorted(src_folder.glob(pattern)):
            if f.is_file() and f.name not in NOT_COPIED:
                shutil.copy2(f, dst_folder / f.name)
                copied.append(f.name)
    return copied


def save_checkpoint(model: nn.Module, config: dict, src_folder: str | Path, dst_folder: str | Path,
                    quantization: dict | None, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write weights (sharded with an index), config.json and the side files of
    `src_folder`; returns the safetensors files written. Stale weight files in
    `dst_folder` are removed first so no old shard can shadow the new ones."""
    src_folder, dst_folder = Path(src_folder), Path(dst_folder)
    dst_folder.mkdir(parents=True, exist_ok=True)
    for old in list(dst_folder.glob("*.safetensors")) + [dst_folder / INDEX]:
        if old.is_file():
            old.unlink()
    weights = dict(tree_flatten(model.parameters()))
    shards = shard(weights, max_shard_bytes)
    pattern = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    files, weight_map = [], {}
    for i, part in enumerate(shards):
        path = dst_folder / pattern.format(i + 1, len(shards))
        mx.save_safetensors(str(path), part, metadata={"format": "mlx"})
        files.append(path)
        weight_map.update({name: path.name for name in part})
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (dst_folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    if src_folder.resolve() != dst_folder.resolve():
        copy_side_files(src_folder, dst_folder)
    (dst_folder / "config.json").write_text(json.dumps(output_config(config, quantization), indent=2) + "\n")
    return files
