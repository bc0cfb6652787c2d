"""Checkpoint folder or hub id → (model, processor).

config → model skeleton → sanitize() the weights → quantize the layers the
checkpoint says are quantized → load strictly, naming any tensor that is off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .models import idefics3, lfm2_vl
from .models.cpu_layers import use_cpu_layers
from .processor import Processor, model_type

# model_type (config.json) → the module holding that family's ModelConfig and Model;
# the same keys as processor.FAMILIES
MODELS = {"lfm2_vl": lfm2_vl, "idefics3": idefics3}
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
CPU_CACHE_BYTES = 64 << 20  # freed buffers MLX keeps for reuse on the CPU (its default there: 32 MB)


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be found, fetched or read; the message says which and why."""


def resolve(path_or_repo: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id, downloaded or taken from the local cache."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"{name}: not a checkpoint folder or a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # very old huggingface_hub
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{name}: no such model on the Hugging Face hub (or it is private)") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"{name}: not in the local cache and the hub cannot be reached "
                             "(offline, or HF_HUB_OFFLINE=1); download it once while online") from None
    except Exception as e:  # network errors come in many types
        raise ModelLoadError(f"{name}: could not download ({type(e).__name__}: {e})") from None


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise ModelLoadError(f"{path}: shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return [path / f for f in files]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights in this folder")
    return files


def read_weights(files: list[Path]) -> dict:
    weights = {}
    for f in files:
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:
            raise ModelLoadError(f"{f}: cannot read safetensors ({e})") from None
    return weights


def quantize_like_checkpoint(model: nn.Module, qcfg: dict, weights: dict) -> None:
    """Turn into quantized layers exactly those the checkpoint stores quantized,
    with the per-layer bits/group size of `config["quantization"]` where given."""
    default = {k: qcfg[k] for k in ("group_size", "bits", "mode") if k in qcfg}

    def predicate(name: str, module: nn.Module):
        if f"{name}.scales" not in weights:
            return False
        for key in (name, name.removeprefix("language_model.")):  # mlx-lm style keys lack the prefix
            override = qcfg.get(key)
            if isinstance(override, dict):
                return {**default, **override}
        return True

    nn.quantize(model, group_size=default.get("group_size", 64), bits=default.get("bits", 4),
                mode=default.get("mode", "affine"), class_predicate=predicate)


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


def load_model(path: Path, *, dtype: mx.Dtype | None = None, bits: int | None = None,
               group_size: int = 64) -> nn.Module:
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no config.json") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    try:
        kind = model_type(path)  # the same family the processor picks
    except ValueError as e:
        raise ModelLoadError(f"{path / 'config.json'}: {e}") from None
    family = MODELS[kind]
    try:
        model = family.Model(family.ModelConfig.from_dict({**config, "model_type": kind}))
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path / 'config.json'}: {e}") from None
    files = weight_files(path)
    weights = model.sanitize(read_weights(files))
    qcfg = config.get("quantization") or config.get("quantization_config")
    quantized = any(k.endswith(".scales") for k in weights)
    if bits is not None and quantized:
        from .quant import describe_quantization

        raise ValueError(f"{path} is already quantized ({describe_quantization(qcfg, quantized)}): load it "
                         "without `bits`, or quantize its float checkpoint")
    if qcfg and quantized:
        quantize_like_checkpoint(model, qcfg, weights)
    check_weights(model, weights, str(files[0]) if len(files) == 1 else f"{path} ({len(files)} shards)")
    if dtype is None:  # bf16 arithmetic is emulated and slow on CPUs: compute in float32 there
        dtype = mx.float32 if mx.default_device() == mx.cpu else None
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and v.dtype != dtype else v
                   for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    if bits is not None:
        from .quant import quantize_model

        quantize_model(model, bits=bits, group_size=group_size)
    use_cpu_layers(model)
    if mx.default_device() == mx.cpu:
        keep_freed_buffers()
    mx.eval(model.parameters())
    model.eval()
    return model


def keep_freed_buffers() -> None:
    """With MLX's 32 MB CPU cache, larger freed buffers go back to the OS and are
    page-faulted in again: 591-634 MB of faults per float32 512² vision pass here,
    63-106 MB with 64 MB (1.9-2.6 s against 1.6-2.1 s a pass). 256 MB also saved
    the 4-bit path's faults but raised its peak RSS by 40-50 MB (single runs). Raising
    it for the vision pass only gave a higher float32 peak RSS (1972 against 1949 MB,
    3 runs each). Raise it for the process; never lower a larger limit."""
    previous = mx.set_cache_limit(CPU_CACHE_BYTES)
    if previous > CPU_CACHE_BYTES:
        mx.set_cache_limit(previous)


def load(path_or_repo: str | os.PathLike = "LiquidAI/LFM2.5-VL-450M", *, dtype: mx.Dtype | None = None,
         bits: int | None = None, group_size: int = 64) -> tuple[nn.Module, Processor]:
    """Load an LFM2-VL or Idefics3 (SmolVLM) checkpoint: a local folder or a hub id.

    `dtype` casts float weights (default: float32 on the CPU, as stored elsewhere);
    `bits` quantizes a float checkpoint on the fly."""
    path = resolve(path_or_repo)
    model = load_model(path, dtype=dtype, bits=bits, group_size=group_size)
    try:
        processor = Processor.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot build the processor ({type(e).__name__}: {e})") from None
    return model, processor
