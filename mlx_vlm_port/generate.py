"""Prefill the prompt (images included) in chunks, then decode token by token
with the layer caches, sampling each token and streaming the text."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx
import numpy as np

from . import prompt_cache
from .processor import StreamingDetokenizer
from .sample import apply_repetition_penalty, sample

# Model-card defaults for LFM2-VL captioning.
TEMPERATURE, MIN_P, REPETITION_PENALTY = 0.1, 0.15, 1.05


@dataclass
class Response:
    text: str  # the new piece of text (may be empty while a character is incomplete)
    token: int
    prompt_tokens: int
    generation_tokens: int
    prompt_seconds: float  # processor + vision encoder + prefill: the time to the first token
    generation_tps: float
    finish_reason: str | None = None  # "stop", "length" or None while generating


def prefill(model, embeddings: mx.array, cache: list, step: int = 512) -> mx.array:
    """Run the prompt through the LM in chunks; logits (1, vocab) of its last position."""
    prompt_cache.feed(model, embeddings[:, :-1], cache, step)
    return model.language_model(embeddings[:, -1:], cache)[:, -1]


def generate_tokens(model, inputs: dict, *, max_tokens: int, temperature: float, top_p: float,
                    min_p: float, repetition_penalty: float, eos_ids: set, prefill_step_size: int = 2048
                    ) -> Iterator[tuple[int, float]]:
    """Yield (token, seconds to first token) for each new token; the caller stops on EOS."""
    tic = time.perf_counter()
    lm = model.language_model
    cache = lm.make_cache()
    embeds = prompt_cache.prepare(model, inputs, cache, prefill_step_size)
    seen = None
    if repetition_penalty != 1.0:
        seen = np.zeros((1, model.config.text_config.vocab_size), bool)
        seen[0, np.asarray(inputs["input_ids"]).ravel()] = True
        seen = mx.array(seen)

    def choose(logits):
        nonlocal seen
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        y = sample(logits, temperature, top_p, min_p)
        if seen is not None:
            seen = mx.maximum(seen, mx.arange(seen.shape[1]) == y[:, None])
        return y

    y = choose(prefill(model, embeds, cache, prefill_step_size))
    mx.eval(y)
    first = time.perf_counter() - tic
    for n in range(max_tokens):
        more = n + 1 < max_tokens
        if more:  # build the next step's graph while this token computes (~10 ms of Python per step)
            next_y = choose(lm(lm.embed(y[None]), cache)[:, -1])
        token = y.item()
        if token in eos_ids:  # the next step is dropped unrun (the cache is not reused)
            yield token, first
            return
        if more:  # run it while this token is handed out
            mx.async_eval(next_y)
        yield token, first
        if more:
            y = next_y


def stream_generate(model, processor, prompt: str, images: list | None = None, *, max_tokens: int = 256,
                    temperature: float = TEMPERATURE, top_p: float = 1.0, min_p: float = MIN_P,
                    repetition_penalty: float = REPETITION_PENALTY, seed: int | None = None,
                    min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                    longest_edge: int | None = None, do_image_splitting: bool | None = None,
                    ignore_eos: bool = False, prefill_step_size: int = 2048) -> Iterator[Response]:
    """Generate from a templated prompt (and its images), one Response per new token.

    Image options: min/max_image_tokens for LFM2-VL, longest_edge for SmolVLM,
    do_image_splitting for both (None: the checkpoint's setting)."""
    if seed is not None:
        mx.random.seed(seed)
    start = time.perf_counter()
    inputs = processor(prompt, images, min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens,
                       longest_edge=longest_edge, do_image_splitting=do_image_splitting)
    n_prompt = inputs["input_ids"].shape[1]
    eos = set() if ignore_eos else set(processor.eos_token_ids)
    detok = StreamingDetokenizer(processor)
    preprocessing = time.perf_counter() - start
    tic, count = time.perf_counter(), 0
    for token, first in generate_tokens(model, inputs, max_tokens=max_tokens, temperature=temperature,
                                        top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                        eos_ids=eos, prefill_step_size=prefill_step_size):
        if count == 0:
            tic, ttft = time.perf_counter(), first + preprocessing
        count += 1
        rate = (count - 1) / (time.perf_counter() - tic) if count > 1 else 0.0
        if token in eos:
            yield Response("", token, n_prompt, count - 1, ttft, rate, "stop")
            return
        text = detok.add(token)
        reason = "length" if count == max_tokens else None
        if reason:
            text += detok.flush()
        yield Response(text, token, n_prompt, count, ttft, rate, reason)


def generate(model, processor, prompt: str, images: list | None = None, *, max_tokens: int = 256,
             temperature: float = TEMPERATURE, top_p: float = 1.0, min_p: float = MIN_P,
             repetition_penalty: float = REPETITION_PENALTY, seed: int | None = None,
             min_image_tokens: int | None = None, max_image_tokens: int | None = None,
             longest_edge: int | None = None, do_image_splitting: bool | None = None) -> str:
    """The whole generated text (see `stream_generate`)."""
    return "".join(r.text for r in stream_generate(
        model, processor, prompt, images, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, seed=seed, min_image_tokens=min_image_tokens,
        max_image_tokens=max_image_tokens, longest_edge=longest_edge, do_image_splitting=do_image_splitting))
