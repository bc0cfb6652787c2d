"""Next-token choice: repetition penalty, then temperature, top-p and min-p
(the order transformers applies them); temperature 0 is greedy."""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def prompt_seen(input_ids: np.ndarray, vocab_size: int, penalty: float) -> mx.array | None:
    """(1, V) bool: the prompt's tokens, which the repetition penalty starts from; None
    when there is no penalty."""
    if penalty == 1.0:
        return None
    seen = np.zeros((1, vocab_size), bool)
    seen[0, input_ids.ravel()] = True
    return mx.array(seen)


def apply_repetition_penalty(logits: mx.array, seen: mx.array | None, penalty: float) -> mx.array:
    """Make tokens already in the sequence less likely: positive logits ÷ penalty,
    negative ones × penalty (as transformers does). logits (1, V); seen: (1, V) bool."""
    if seen is None or penalty == 1.0:
        return logits
    return mx.where(seen, mx.where(logits < 0, logits * penalty, logits / penalty), logits)


def sample(logits: mx.array, temperature: float = 0.0, top_p: float = 1.0, min_p: float = 0.0,
           key: mx.array | None = None) -> mx.array:
    """logits (B, V) → token ids (B,); `key`: a PRNG key to draw with instead of MLX's global one."""
    if temperature <= 0:
        return mx.argmax(logits, axis=-1)
    logprobs = logits.astype(mx.float32) / temperature
    logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
    if 0.0 < top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        order = mx.argsort(-logprobs, axis=-1)
        sorted_lp = mx.take_along_axis(logprobs, order, axis=-1)
        mass_before = mx.cumsum(mx.exp(sorted_lp), axis=-1) - mx.exp(sorted_lp)
        drop_sorted = mass_before >= top_p
        drop = mx.put_along_axis(mx.zeros_like(drop_sorted), order, drop_sorted, axis=-1)
        logprobs = mx.where(drop, -mx.inf, logprobs)
    if min_p > 0.0:
        # Drop tokens less likely than min_p × the most likely one.
        threshold = mx.max(logprobs, axis=-1, keepdims=True) + mx.log(mx.array(min_p))
        logprobs = mx.where(logprobs < threshold, -mx.inf, logprobs)
    return mx.random.categorical(logprobs, axis=-1, key=key)
