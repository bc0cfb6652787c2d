"""Tiny random SmolVLM (transformers model_type "idefics3") checkpoints in the
Hugging Face layout.

Needs only numpy and `tokenizers` (no torch, no mlx), so it can be imported both
from the project venv and from the reference venv that runs transformers.

    make_tiny_idefics3_checkpoint(path, seed=0, tie=False, processor_overrides=None,
                                  text_overrides=None, vision_overrides=None,
                                  top_overrides=None) -> Path

The folder holds config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, special_tokens_map.json,
chat_template.jinja (SmolVLM-Instruct's), preprocessor_config.json and
processor_config.json; transformers 5.23 loads it with
Idefics3ForConditionalGeneration / AutoProcessor with no missing or unexpected
keys. The tiny model: SigLIP-style vision tower (hidden 32, 2 layers, 4 heads,
patch 8, image_size 64 -> 8x8 patches per frame), pixel-shuffle connector
(scale_factor 2 -> image_seq_len 16), Llama text model (hidden 64, 2 layers,
4 heads / 2 kv heads, head_dim 16, vocab 1024). The processor geometry follows
the vision config: max_image_size = image_size, size = 4 * image_size,
image_seq_len = (image_size / patch_size)^2 / scale_factor^2.
`make_tiny_idefics3_checkpoint(path, **SMOLVLM_256M)` gives the full
SmolVLM-256M-Instruct shape (with the same 1024-entry tokenizer).

The tokenizer: byte-level BPE with exactly 1024 entries, special tokens first
(ids below). It adds no BOS/EOS (the chat template writes "<|im_start|>"), so
`tokenizers.Tokenizer.from_file(...).encode(text)` with its defaults matches
the reference processor's ids. "\\n\\n" is two "\\n" tokens.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from tests.safetensors_io import read_safetensors, write_safetensors  # noqa: F401  (re-exported)
from tests.tiny_tokenizer import _CORPUS, VOCAB_SIZE, build_tokenizer, tokenizer_json

__all__ = [
    "make_tiny_idefics3_checkpoint", "tiny_idefics3_config", "tiny_idefics3_weights",
    "tiny_idefics3_processor_config", "image_seq_len", "build_idefics3_tokenizer",
    "SMOLVLM_256M", "SPECIAL_TOKENS", "CHAT_TEMPLATE", "IMAGE_TOKEN_ID", "FAKE_IMAGE_TOKEN_ID",
    "GLOBAL_IMAGE_TOKEN_ID", "END_OF_UTTERANCE_ID", "EOS_TOKEN_ID", "BOS_TOKEN_ID", "PAD_TOKEN_ID",
    "ROW_COL_TOKEN_IDS", "expected_tensor_names", "read_safetensors", "write_safetensors",
]

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

SPECIAL_TOKENS = [
    "<|endoftext|>",             # 0  unk
    "<|im_start|>",              # 1  bos (written by the chat template, never added)
    "<|im_end|>",                # 2  pad
    "<fake_token_around_image>",  # 3
    "<image>",                   # 4
    "<end_of_utterance>",        # 5  eos
    "<global-img>",              # 6
] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]  # 7 .. 42

ENDOFTEXT_ID = 0
BOS_TOKEN_ID = IM_START_ID = 1
PAD_TOKEN_ID = IM_END_ID = 2
FAKE_IMAGE_TOKEN_ID = 3
IMAGE_TOKEN_ID = 4
EOS_TOKEN_ID = END_OF_UTTERANCE_ID = 5
GLOBAL_IMAGE_TOKEN_ID = 6
ROW_COL_TOKEN_IDS = {(r, c): 7 + 6 * (r - 1) + (c - 1) for r in range(1, 7) for c in range(1, 7)}

# more text so that the BPE reaches 1024 entries with only 43 special tokens
_EXTRA_CORPUS = """\
User: Can you describe the photograph? Assistant: Sure. The photograph shows a
harbour at dusk, fishing boats tied to a pier, seagulls circling over nets, and
lanterns glowing orange against a purple horizon. Quickly zooming in, we notice
jumping fish, weathered ropes, rusty anchors and a lighthouse beyond the jetty.

Question: how many objects are visible? Answer: seven. Vivid, saturated colours
dominate; typography on the poster reads "Jazz Festival, Saturday, 9pm". Maybe
the diagram illustrates photosynthesis: chlorophyll absorbs sunlight, oxygen is
released, glucose gets produced. Equations like x^2 + y^2 = z^2 appear, too!
"""

CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics3_tokenizer():
    """Deterministic byte-level BPE (1024 entries, SmolVLM's special tokens, no BOS)."""
    return build_tokenizer(SPECIAL_TOKENS, _CORPUS + "\n" + _EXTRA_CORPUS, bos=None)


def _tokenizer_config() -> dict:
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, s in enumerate(SPECIAL_TOKENS)}
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "processor_class": "Idefics3Processor",
        "added_tokens_decoder": added,
    }


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

_VISION_CONFIG = {
    "model_type": "idefics3_vision", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_channels": 3, "patch_size": 8, "image_size": 64,
    "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh", "attention_dropout": 0.0,
    "initializer_range": 0.02,
}

_TEXT_CONFIG = {
    "model_type": "llama", "vocab_size": VOCAB_SIZE, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "max_position_embeddings": 8192, "hidden_act": "silu", "attention_bias": False,
    "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1, "initializer_range": 0.02,
    "use_cache": True, "bos_token_id": BOS_TOKEN_ID, "eos_token_id": IM_END_ID, "pad_token_id": PAD_TOKEN_ID,
}

# The shape of HuggingFaceTB/SmolVLM-256M-Instruct (tokenizer stays the tiny one):
# make_tiny_idefics3_checkpoint(path, **SMOLVLM_256M).
SMOLVLM_256M = dict(
    tie=False,
    vision_overrides=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          patch_size=16, image_size=512),
    text_overrides=dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                        rms_norm_eps=1e-5),
    top_overrides=dict(scale_factor=4),
    processor_overrides=dict(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}),
)


def tiny_idefics3_config(*, tie: bool = False, text_overrides: dict | None = None,
                         vision_overrides: dict | None = None, top_overrides: dict | None = None) -> dict:
    """config.json of the tiny model. A `rope_theta` text override is written
    the way transformers 5.23 writes llama configs (rope_parameters.rope_theta);
    text_overrides={"rope_parameters": None} writes the legacy top-level
    `rope_theta` instead (as the published SmolVLM configs have; mlx-vlm 0.7.10
    reads only that spelling)."""
    vision = copy.deepcopy(_VISION_CONFIG)
    vision.update(copy.deepcopy(vision_overrides or {}))
    text = copy.deepcopy(_TEXT_CONFIG)
    text_overrides = copy.deepcopy(text_overrides or {})
    theta = text_overrides.pop("rope_theta", None)
    text.update(text_overrides)
    if text["rope_parameters"] is None:
        del text["rope_parameters"]
        text["rope_theta"] = float(theta if theta is not None else _TEXT_CONFIG["rope_parameters"]["rope_theta"])
    elif theta is not None:
        text["rope_parameters"]["rope_theta"] = float(theta)
    text["tie_word_embeddings"] = bool(tie)
    config = {
        "model_type": "idefics3",
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": IMAGE_TOKEN_ID,
        "scale_factor": 2,
        "tie_word_embeddings": bool(tie),
        "use_cache": True,
        "vision_config": vision,
        "text_config": text,
        "dtype": "float32",
        "transformers_version": "5.23.0",
    }
    config.update(copy.deepcopy(top_overrides or {}))
    return config


def image_seq_len(config: dict) -> int:
    """<image> tokens per frame: (image_size / patch_size)^2 / scale_factor^2."""
    v = config["vision_config"]
    return ((v["image_size"] // v["patch_size"]) ** 2) // (config["scale_factor"] ** 2)


def tiny_idefics3_processor_config(config: dict, processor_overrides: dict | None = None) -> dict:
    """preprocessor_config.json (geometry from the vision config, then overrides)."""
    side = config["vision_config"]["image_size"]
    pre = {
        "image_processor_type": "Idefics3ImageProcessor", "processor_class": "Idefics3Processor",
        "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255, "resample": 1,
        "size": {"longest_edge": 4 * side}, "max_image_size": {"longest_edge": side},
    }
    pre.update(copy.deepcopy(processor_overrides or {}))
    return pre


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def _shapes(config: dict) -> dict[str, tuple[int, ...]]:
    v, t = config["vision_config"], config["text_config"]
    vh, vi, c, p = v["hidden_size"], v["intermediate_size"], v["num_channels"], v["patch_size"]
    s: dict[str, tuple[int, ...]] = {}
    pre = "model.vision_model."
    s[pre + "embeddings.patch_embedding.weight"] = (vh, c, p, p)  # torch Conv2d layout
    s[pre + "embeddings.patch_embedding.bias"] = (vh,)
    s[pre + "embeddings.position_embedding.weight"] = ((v["image_size"] // p) ** 2, vh)
    for i in range(v["num_hidden_layers"]):
        lp = f"{pre}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[lp + f"self_attn.{proj}.weight"] = (vh, vh)
            s[lp + f"self_attn.{proj}.bias"] = (vh,)
        for ln in ("layer_norm1", "layer_norm2"):
            s[lp + ln + ".weight"] = (vh,)
            s[lp + ln + ".bias"] = (vh,)
        s[lp + "mlp.fc1.weight"], s[lp + "mlp.fc1.bias"] = (vi, vh), (vi,)
        s[lp + "mlp.fc2.weight"], s[lp + "mlp.fc2.bias"] = (vh, vi), (vh,)
    s[pre + "post_layernorm.weight"] = (vh,)
    s[pre + "post_layernorm.bias"] = (vh,)

    th, vocab = t["hidden_size"], t["vocab_size"]
    s["model.connector.modality_projection.proj.weight"] = (th, vh * config["scale_factor"] ** 2)
    nh, nkv, ff = t["num_attention_heads"], t["num_key_value_heads"], t["intermediate_size"]
    hd = t.get("head_dim") or th // nh
    lm = "model.text_model."
    s[lm + "embed_tokens.weight"] = (vocab, th)
    for i in range(t["num_hidden_layers"]):
        lp = f"{lm}layers.{i}."
        s[lp + "self_attn.q_proj.weight"] = (nh * hd, th)
        s[lp + "self_attn.k_proj.weight"] = (nkv * hd, th)
        s[lp + "self_attn.v_proj.weight"] = (nkv * hd, th)
        s[lp + "self_attn.o_proj.weight"] = (th, nh * hd)
        s[lp + "mlp.gate_proj.weight"] = (ff, th)
        s[lp + "mlp.up_proj.weight"] = (ff, th)
        s[lp + "mlp.down_proj.weight"] = (th, ff)
        s[lp + "input_layernorm.weight"] = (th,)
        s[lp + "post_attention_layernorm.weight"] = (th,)
    s[lm + "norm.weight"] = (th,)
    if not config["tie_word_embeddings"]:
        s["lm_head.weight"] = (vocab, th)
    return s


def expected_tensor_names(config: dict) -> list[str]:
    return list(_shapes(config))


def tiny_idefics3_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 random weights, with tests/tiny_checkpoint.py's
    scales: matrices std 1/sqrt(fan_in) (the conv's fan_in is C*p*p), token
    embeddings std 0.1, position embeddings std 0.3, norm weights 1 + N(0, 0.05),
    biases N(0, 0.02)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in _shapes(config).items():
        if name.endswith(".bias"):
            a = rng.normal(0.0, 0.02, size=shape)
        elif "norm" in name:  # layer_norm1/2, post_layernorm, input/post_attention_layernorm, norm
            a = 1.0 + rng.normal(0.0, 0.05, size=shape)
        elif "embed_tokens" in name:
            a = rng.normal(0.0, 0.1, size=shape)
        elif "position_embedding" in name:
            a = rng.normal(0.0, 0.3, size=shape)
        else:
            a = rng.normal(0.0, 1.0 / np.sqrt(int(np.prod(shape[1:]))), size=shape)
        out[name] = np.ascontiguousarray(a.astype(np.float32))
    return out


# ---------------------------------------------------------------------------
# Main entry point
# ---------------------------------------------------------------------------


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def make_tiny_idefics3_checkpoint(
    path,
    *,
    seed: int = 0,
    tie: bool = False,
    processor_overrides: dict | None = None,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
    top_overrides: dict | None = None,
) -> Path:
    """Write a complete tiny random SmolVLM checkpoint (HF layout) to `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_idefics3_config(tie=tie, text_overrides=text_overrides, vision_overrides=vision_overrides,
                                  top_overrides=top_overrides)
    _dump(path / "config.json", config)
    _dump(path / "generation_config.json", {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": END_OF_UTTERANCE_ID,
                                            "pad_token_id": PAD_TOKEN_ID, "transformers_version": "5.23.0"})
    write_safetensors(path / "model.safetensors", tiny_idefics3_weights(config, seed=seed), {"format": "pt"})

    _dump(path / "tokenizer.json", tokenizer_json(build_idefics3_tokenizer()))
    _dump(path / "tokenizer_config.json", _tokenizer_config())
    _dump(path / "special_tokens_map.json", {
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
    })
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    _dump(path / "preprocessor_config.json", tiny_idefics3_processor_config(config, processor_overrides))
    _dump(path / "processor_config.json", {"processor_class": "Idefics3Processor",
                                           "image_seq_len": image_seq_len(config)})
    return path
