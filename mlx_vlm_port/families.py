"""The one registry of model families: model_type → the model module, the image
processor, the config fix-ups a saved checkpoint needs, and the quantizer's rules.

Light to import (no MLX): the modules behind an entry load on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's, normalised (`lfm2-vl` → `lfm2_vl`)
    label: str  # for messages
    image_processor_type: str  # preprocessor_config.json's, for folders without config.json
    model_module: str  # under mlx_vlm_port.models: ModelConfig, Model
    processor_module: str  # under mlx_vlm_port: ImageProcessor
    # The quantizer's rules (quant.py): Linear/Embedding paths kept in float (→ why),
    # the vision side's path prefixes, and the layers the mixed recipes give more bits.
    keep_float: dict[str, str]
    vision_prefixes: tuple[str, ...]
    sensitive_paths: Callable[[object], set[str]]
    # What mlx-vlm needs in a config.json we write (save.py), applied in place.
    fix_saved_config: Callable[[dict], None]

    def models(self):
        """The module holding ModelConfig and Model."""
        return importlib.import_module(f"mlx_vlm_port.models.{self.model_module}")

    def image_processor(self):
        """The ImageProcessor class."""
        return importlib.import_module(f"mlx_vlm_port.{self.processor_module}").ImageProcessor


def _lfm2_sensitive_paths(model) -> set[str]:
    """Where LFM2 loses most to low bits: the token embedding (and an untied head),
    every attention projection, and all projections of the first and last layers."""
    lm = model.language_model
    paths = {"language_model.model.embed_tokens"}
    if "lm_head" in lm:
        paths.add("language_model.lm_head")
    layers = lm.model.layers
    attention = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
    conv = ("conv.in_proj", "conv.out_proj")
    ffn = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
    for i, layer in enumerate(layers):
        names = attention if layer.is_attention else ()
        if i in (0, len(layers) - 1):
            names = (attention if layer.is_attention else conv) + ffn
        paths |= {f"language_model.model.layers.{i}.{n}" for n in names}
    return paths


def _llama_sensitive_paths(model) -> set[str]:
    """mlx-lm's rule for Llamas: the token embedding and head, and v_proj/down_proj in the
    first and last eighth of the layers and in every third layer between."""
    paths = {"language_model.embed_tokens"}
    if "lm_head" in model.language_model:
        paths.add("language_model.lm_head")
    n = len(model.language_model.layers)
    for i in range(n):
        if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2:
            paths |= {f"language_model.layers.{i}.self_attn.v_proj", f"language_model.layers.{i}.mlp.down_proj"}
    return paths


def _top_level_rope_theta(config: dict) -> None:
    text = config.get("text_config")
    rope = text.get("rope_parameters") if isinstance(text, dict) else None
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in text:
        # mlx-vlm 0.7.10's language models read only the top-level rope_theta (and assume 1e6 without it).
        text["rope_theta"] = rope["rope_theta"]


def _lfm2_vl_saved_config(config: dict) -> None:
    text = config.get("text_config")
    if isinstance(text, dict) and "block_dim" not in text and "hidden_size" in text:
        # mlx-vlm 0.7.10 sizes the LFM2 MLP from block_dim and assumes 1024 when it is absent.
        text["block_dim"] = text["hidden_size"]
    _top_level_rope_theta(config)


LFM2_VL = Family(
    model_type="lfm2_vl", label="LFM2-VL", image_processor_type="Lfm2VlImageProcessor",
    model_module="lfm2_vl", processor_module="processing_lfm2_vl",
    keep_float={
        # The learned position grid is resized per image (antialiased bilinear): it must stay a float table.
        "vision_tower.embeddings.position_embedding": "position table, resized per image",
        # A 16×16 conv kernel stored as a Linear; both this port and mlx-vlm read its weight dtype
        # to pick the vision compute dtype (a uint32 packed weight would turn the pixels into integers).
        "vision_tower.embeddings.patch_embedding": "patch embedding (a conv kernel)",
    },
    vision_prefixes=("vision_tower.", "multi_modal_projector."),
    sensitive_paths=_lfm2_sensitive_paths, fix_saved_config=_lfm2_vl_saved_config)

IDEFICS3 = Family(
    model_type="idefics3", label="Idefics3 (SmolVLM)", image_processor_type="Idefics3ImageProcessor",
    model_module="idefics3", processor_module="processing_idefics3",
    keep_float={"vision_model.embeddings.position_embedding": "position table, added to every patch"},
    vision_prefixes=("vision_model.", "connector."),
    sensitive_paths=_llama_sensitive_paths, fix_saved_config=_top_level_rope_theta)

FAMILIES = {f.model_type: f for f in (LFM2_VL, IDEFICS3)}


def family(model_type: str | None) -> Family:
    """The family of a config's model_type; ValueError names the supported ones."""
    kind = str(model_type).replace("-", "_")
    if kind not in FAMILIES:
        raise ValueError(f"model_type {kind!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def family_of_image_processor(image_processor_type: str | None) -> Family | None:
    return next((f for f in FAMILIES.values() if f.image_processor_type == image_processor_type), None)
