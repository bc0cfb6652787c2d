"""How many rows a decoding batch may hold, from the memory left after the weights.

The rule: half of the available memory, less one image's vision pass and a
prefill of up to PACK_TOKENS rows (prompts admitted together are prefilled
packed), divided by what one row holds until it finishes: its attention keys
and values for prompt + max_tokens positions, and its logits and sampling
temporaries. At most MAX_AUTO rows (past that a CPU step is compute-bound and
gains nothing; a GPU gains little more).
Available memory: `memory.available_memory`.
"""

from __future__ import annotations

from .memory import available_memory

MAX_AUTO = 16
PACK_TOKENS = 1024  # prompts prefilled together hold at most this many rows (batch.py)


class BatchMemoryError(MemoryError):
    """One image alone needs more memory than is available."""


def _text_sizes(model) -> tuple[int, int, int, int]:
    """(attention layers, kv heads × head dim, hidden size, vocab) of the language model."""
    c = model.config.text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = sum(1 for t in getattr(c, "layer_types", None) or [] if t != "conv") or c.num_hidden_layers
    return attention, c.num_key_value_heads * head_dim, c.hidden_size, c.vocab_size


def row_bytes(model, prompt_tokens: int, max_tokens: int, itemsize: int) -> int:
    """What one decoding row holds: keys and values of every attention layer for its
    positions (rounded up to the cache's 256-position growth), logits and sampling
    temporaries (four vocab-wide float32 arrays)."""
    layers, kv_width, _, vocab = _text_sizes(model)
    positions = -(-(prompt_tokens + max_tokens) // 256) * 256
    return layers * 2 * kv_width * positions * itemsize + 4 * vocab * 4


def one_image_bytes(model, inputs: dict, itemsize: int, prompt_tokens: int = 0) -> int:
    """The vision pass and prefill of one processor output: the encoder's attention
    scores for up to four views at once and its activations, and the prompt's
    activations through the language model (the widest layer, a few arrays), for at
    least `prompt_tokens` rows (a packed prefill's)."""
    v = model.config.vision_config
    pixels = inputs.get("pixel_values")
    vision = 0
    if pixels is not None:
        views = pixels.shape[0]
        if pixels.ndim == 3:  # LFM2-VL: patch rows padded to a maximum; the mask counts the real ones
            mask = inputs.get("pixel_attention_mask")
            patches = int(mask.sum(axis=1).max()) if mask is not None else pixels.shape[1]
        else:
            patches = (pixels.shape[1] // v.patch_size) * (pixels.shape[2] // v.patch_size)
        at_once = min(views, 4)
        vision = (at_once * v.num_attention_heads * patches**2 * 4
                  + at_once * patches * v.intermediate_size * itemsize * 3)
    _, _, hidden, vocab = _text_sizes(model)
    tokens = max(inputs["input_ids"].shape[1], prompt_tokens)
    ff = getattr(model.config.text_config, "ff_dim", None) or model.config.text_config.intermediate_size
    return vision + tokens * (3 * ff + 6 * hidden) * itemsize + vocab * 4


def auto_batch_size(model, inputs: dict, max_tokens: int, itemsize: int, available: int | None = None) -> int:
    """The batch size for rows like `inputs` (one processor output) by the rule above;
    BatchMemoryError when one such row does not fit."""
    available = available_memory() if available is None else available
    per_row = row_bytes(model, inputs["input_ids"].shape[1], max_tokens, itemsize)
    alone = one_image_bytes(model, inputs, itemsize)
    if available // 2 - alone < per_row:
        need = (alone + per_row) * 2
        raise BatchMemoryError(f"one image needs about {need / 2**20:.0f} MB with its caption but only "
                               f"{available / 2**20:.0f} MB is available (fewer image tokens or max_tokens "
                               f"need less)")
    budget = available // 2 - one_image_bytes(model, inputs, itemsize, PACK_TOKENS)  # several rows: packed
    return max(1, min(MAX_AUTO, budget // per_row))
