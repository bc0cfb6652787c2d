"""Tiny random LFM2-VL checkpoints in the original Hugging Face layout.

Needs only numpy and `tokenizers` (no torch, no mlx, no safetensors package), so
it can be imported both from the project venv and from the reference venv that
runs transformers.

    make_tiny_checkpoint(path, seed=0, projector_use_layernorm=True, tie=True,
                         layout="hf", processor_overrides=None,
                         text_overrides=None, vision_overrides=None) -> Path

The folder holds config.json, model.safetensors (or two shards plus
model.safetensors.index.json with layout="sharded"), tokenizer.json,
tokenizer_config.json, special_tokens_map.json, chat_template.jinja,
processor_config.json and preprocessor_config.json. The tensor names are the
ones of the published LiquidAI checkpoints, which transformers 5.x loads with
no missing/unexpected keys.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from tests.safetensors_io import read_safetensors, write_safetensors
from tests.tiny_tokenizer import (CHAT_TEMPLATE, IMAGE_TOKEN_ID, SPECIAL_TOKENS, VOCAB_SIZE, build_tokenizer,
                                  tokenizer_config, tokenizer_json)

__all__ = [
    "make_tiny_checkpoint",
    "tiny_config",
    "tiny_weights",
    "tiny_processor_config",
    "build_tokenizer",
    "write_safetensors",
    "read_safetensors",
    "expected_tensor_names",
    "mlp_hidden_dim",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
]


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

_VISION_CONFIG = {
    "model_type": "siglip2_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_channels": 3,
    "patch_size": 16,
    "num_patches": 256,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
    "attention_dropout": 0.0,
    "vision_use_head": False,
}

_TEXT_CONFIG = {
    "model_type": "lfm2",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "layer_types": ["conv", "full_attention", "conv", "full_attention"],
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "norm_eps": 1e-5,
    "conv_L_cache": 3,
    "conv_bias": False,
    "block_ff_dim": 192,
    "intermediate_size": 192,
    "block_multiple_of": 32,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 8192,
    "initializer_range": 0.02,
    "use_cache": True,
    "bos_token_id": 1,
    "eos_token_id": 7,
    "pad_token_id": 0,
}

_PROCESSOR_DEFAULTS = {
    "min_image_tokens": 32,
    "max_image_tokens": 256,
    "do_image_splitting": True,
    "tile_size": 512,
    "min_tiles": 2,
    "max_tiles": 10,
    "use_thumbnail": True,
    "max_pixels_tolerance": 2.0,
    "encoder_patch_size": 16,
    "downsample_factor": 2,
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "do_pad": True,
    "max_num_patches": 1024,
    "size": {"height": 512, "width": 512},
}


def tiny_config(
    *,
    projector_use_layernorm: bool = True,
    tie: bool = True,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
    top_overrides: dict | None = None,
) -> dict:
    """The config.json dict of the tiny model (overrides update the sub-configs,
    `top_overrides` the top level, e.g. projector_hidden_size)."""
    vision = copy.deepcopy(_VISION_CONFIG)
    vision.update(copy.deepcopy(vision_overrides or {}))
    text = copy.deepcopy(_TEXT_CONFIG)
    text_overrides = copy.deepcopy(text_overrides or {})
    # keep the two spellings of the FF width consistent unless both are given
    if "block_ff_dim" in text_overrides and "intermediate_size" not in text_overrides:
        text_overrides["intermediate_size"] = text_overrides["block_ff_dim"]
    elif "intermediate_size" in text_overrides and "block_ff_dim" not in text_overrides:
        text_overrides["block_ff_dim"] = text_overrides["intermediate_size"]
    text.update(text_overrides)
    if "num_hidden_layers" in text_overrides and "layer_types" not in text_overrides:
        n = text["num_hidden_layers"]
        text["layer_types"] = ["conv" if i % 2 == 0 else "full_attention" for i in range(n)]
    text["tie_word_embeddings"] = bool(tie)
    config = {
        "model_type": "lfm2_vl",
        "architectures": ["Lfm2VlForConditionalGeneration"],
        "image_token_id": IMAGE_TOKEN_ID,
        "downsample_factor": 2,
        "projector_hidden_size": 64,
        "projector_hidden_act": "gelu",
        "projector_bias": True,
        "projector_use_layernorm": bool(projector_use_layernorm),
        "tie_word_embeddings": bool(tie),
        "vision_config": vision,
        "text_config": text,
        "dtype": "float32",
        "transformers_version": "5.23.0",
    }
    config.update(copy.deepcopy(top_overrides or {}))
    return config


# The shape of LiquidAI/LFM2.5-VL-450M, for full-size random checkpoints:
# make_tiny_checkpoint(path, **LFM25_VL_450M).
LFM25_VL_450M = dict(
    vision_overrides=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    text_overrides=dict(
        vocab_size=65536, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
        block_ff_dim=6656, block_multiple_of=256, max_position_embeddings=32768,
        layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                     "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                     "full_attention", "conv"],
    ),
    top_overrides=dict(projector_hidden_size=2560),
)


def mlp_hidden_dim(text_config: dict) -> int:
    """Feed-forward width exactly as transformers' Lfm2MLP computes it."""
    ff = text_config.get("block_ff_dim", text_config.get("intermediate_size"))
    if text_config.get("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        mult = text_config.get("block_ffn_dim_multiplier", 1.0)
        if mult is not None:
            ff = int(mult * ff)
            m = text_config.get("block_multiple_of", 256)
            ff = m * ((ff + m - 1) // m)
    return ff


def tiny_processor_config(processor_overrides: dict | None = None) -> dict:
    cfg = copy.deepcopy(_PROCESSOR_DEFAULTS)
    cfg.update(copy.deepcopy(processor_overrides or {}))
    return cfg


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def _shapes(config: dict) -> dict[str, tuple[int, ...]]:
    v, t = config["vision_config"], config["text_config"]
    shapes: dict[str, tuple[int, ...]] = {}
    vh, vi, c, p = v["hidden_size"], v["intermediate_size"], v["num_channels"], v["patch_size"]
    pre = "model.vision_tower.vision_model."
    shapes[pre + "embeddings.patch_embedding.weight"] = (vh, c * p * p)
    shapes[pre + "embeddings.patch_embedding.bias"] = (vh,)
    shapes[pre + "embeddings.position_embedding.weight"] = (v["num_patches"], vh)
    for i in range(v["num_hidden_layers"]):
        lp = f"{pre}encoder.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[lp + ln + ".weight"] = (vh,)
            shapes[lp + ln + ".bias"] = (vh,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[lp + f"self_attn.{proj}.weight"] = (vh, vh)
            shapes[lp + f"self_attn.{proj}.bias"] = (vh,)
        shapes[lp + "mlp.fc1.weight"] = (vi, vh)
        shapes[lp + "mlp.fc1.bias"] = (vi,)
        shapes[lp + "mlp.fc2.weight"] = (vh, vi)
        shapes[lp + "mlp.fc2.bias"] = (vh,)
    shapes[pre + "post_layernorm.weight"] = (vh,)
    shapes[pre + "post_layernorm.bias"] = (vh,)

    th = t["hidden_size"]
    f = config["downsample_factor"]
    pin, ph = vh * f * f, config["projector_hidden_size"]
    pp = "model.multi_modal_projector."
    if config["projector_use_layernorm"]:
        shapes[pp + "layer_norm.weight"] = (pin,)
        shapes[pp + "layer_norm.bias"] = (pin,)
    shapes[pp + "linear_1.weight"] = (ph, pin)
    if config.get("projector_bias", True):
        shapes[pp + "linear_1.bias"] = (ph,)
    shapes[pp + "linear_2.weight"] = (th, ph)
    if config.get("projector_bias", True):
        shapes[pp + "linear_2.bias"] = (th,)

    lm = "model.language_model."
    vocab = t["vocab_size"]
    nh, nkv = t["num_attention_heads"], t["num_key_value_heads"]
    hd = t.get("head_dim") or th // nh
    ff = mlp_hidden_dim(t)
    L = t["conv_L_cache"]
    shapes[lm + "embed_tokens.weight"] = (vocab, th)
    for i, kind in enumerate(t["layer_types"]):
        lp = f"{lm}layers.{i}."
        shapes[lp + "operator_norm.weight"] = (th,)
        shapes[lp + "ffn_norm.weight"] = (th,)
        if kind == "full_attention":
            shapes[lp + "self_attn.q_proj.weight"] = (nh * hd, th)
            shapes[lp + "self_attn.k_proj.weight"] = (nkv * hd, th)
            shapes[lp + "self_attn.v_proj.weight"] = (nkv * hd, th)
            shapes[lp + "self_attn.out_proj.weight"] = (th, nh * hd)
            shapes[lp + "self_attn.q_layernorm.weight"] = (hd,)
            shapes[lp + "self_attn.k_layernorm.weight"] = (hd,)
        else:
            shapes[lp + "conv.in_proj.weight"] = (3 * th, th)
            shapes[lp + "conv.out_proj.weight"] = (th, th)
            shapes[lp + "conv.conv.weight"] = (th, 1, L)
            if t.get("conv_bias", False):
                shapes[lp + "conv.in_proj.bias"] = (3 * th,)
                shapes[lp + "conv.out_proj.bias"] = (th,)
                shapes[lp + "conv.conv.bias"] = (th,)
        shapes[lp + "feed_forward.w1.weight"] = (ff, th)
        shapes[lp + "feed_forward.w3.weight"] = (ff, th)
        shapes[lp + "feed_forward.w2.weight"] = (th, ff)
    shapes[lm + "embedding_norm.weight"] = (th,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, th)
    return shapes


def expected_tensor_names(config: dict) -> list[str]:
    return list(_shapes(config).keys())


def tiny_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 random weights for `config`, in name order.

    Scales are chosen so the tiny model is not degenerate: matrices use
    std 1/sqrt(fan_in) (with 0.02 the residual stream is just the token
    embedding and greedy decoding repeats the last prompt token), token
    embeddings std 0.1, position embeddings std 0.3 (so a wrong resize of the
    position grid shows), norm weights 1 + N(0, 0.05), biases N(0, 0.02).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in _shapes(config).items():
        is_norm = any(k in name for k in ("layer_norm", "layernorm", "_norm.", "post_layernorm"))
        if name.endswith(".bias"):
            a = rng.normal(0.0, 0.02, size=shape)
        elif is_norm:
            a = 1.0 + rng.normal(0.0, 0.05, size=shape)
        elif "embed_tokens" in name:
            a = rng.normal(0.0, 0.1, size=shape)
        elif "position_embedding" in name:
            a = rng.normal(0.0, 0.3, size=shape)
        elif name.endswith("conv.conv.weight"):
            a = rng.normal(0.0, 0.3, size=shape)
        else:
            a = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), size=shape)
        out[name] = np.ascontiguousarray(a.astype(np.float32))
    return out


# ---------------------------------------------------------------------------
# Main entry point
# ---------------------------------------------------------------------------


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def make_tiny_checkpoint(
    path,
    *,
    seed: int = 0,
    projector_use_layernorm: bool = True,
    tie: bool = True,
    layout: str = "hf",
    processor_overrides: dict | None = None,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
    top_overrides: dict | None = None,
) -> Path:
    """Write a complete tiny random LFM2-VL checkpoint (HF layout) to `path`."""
    if layout not in ("hf", "sharded"):
        raise ValueError(f"layout must be 'hf' or 'sharded', got {layout!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    config = tiny_config(
        projector_use_layernorm=projector_use_layernorm,
        tie=tie,
        text_overrides=text_overrides,
        vision_overrides=vision_overrides,
        top_overrides=top_overrides,
    )
    _dump(path / "config.json", config)
    _dump(
        path / "generation_config.json",
        {"bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0, "transformers_version": "5.23.0"},
    )

    weights = tiny_weights(config, seed=seed)
    meta = {"format": "pt"}
    if layout == "hf":
        write_safetensors(path / "model.safetensors", weights, meta)
    else:
        names = list(weights)
        # split: vision tower + projector in shard 1, language model in shard 2
        first = [n for n in names if not n.startswith(("model.language_model.", "lm_head."))]
        second = [n for n in names if n not in set(first)]
        shards = {
            "model-00001-of-00002.safetensors": first,
            "model-00002-of-00002.safetensors": second,
        }
        weight_map = {}
        total = 0
        for fname, keys in shards.items():
            write_safetensors(path / fname, {k: weights[k] for k in keys}, meta)
            for k in keys:
                weight_map[k] = fname
                total += weights[k].nbytes
        _dump(
            path / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )

    tok = build_tokenizer()
    _dump(path / "tokenizer.json", tokenizer_json(tok))
    _dump(path / "tokenizer_config.json", tokenizer_config())
    _dump(
        path / "special_tokens_map.json",
        {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"},
    )
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    proc = tiny_processor_config(processor_overrides)
    pre = {"image_processor_type": "Lfm2VlImageProcessor", "processor_class": "Lfm2VlProcessor"}
    pre.update(proc)
    _dump(path / "preprocessor_config.json", pre)
    _dump(path / "processor_config.json", {"processor_class": "Lfm2VlProcessor"})
    return path
