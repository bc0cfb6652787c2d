"""The processor's NumPy output → image features and merged embeddings → prefill
in chunks → decode token by token with the layer caches, sampling each token
and streaming the text. Host data (ids, pixels) is read here once, before it
becomes MLX arrays."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx
import numpy as np

from .constrain import JsonConstraint
from .options import ImageOptions, SamplingOptions
from .processor import StreamingDetokenizer, image_inputs
from .prompt_cache import PromptCache
from .sample import apply_repetition_penalty, prompt_seen, sample


@dataclass
class Response:
    text: str  # the new piece of text (may be empty while a character is incomplete)
    token: int
    prompt_tokens: int
    generation_tokens: int
    prompt_seconds: float  # processor + vision encoder + prefill: the time to the first token
    generation_tps: float
    finish_reason: str | None = None  # "stop", "length" or None while generating


def feed(model, embeddings: mx.array, cache: list, step: int) -> None:
    """Run embeddings (1, n, D) through the LM into `cache`, `step` tokens at a time
    (bounding the attention scores' memory), computing no logits."""
    for start in range(0, embeddings.shape[1], step):
        model.language_model.hidden(embeddings[:, start:start + step], cache)
        mx.eval([c.state for c in cache])


def prefill(model, embeddings: mx.array, cache: list, step: int = 512) -> mx.array:
    """Run the prompt through the LM in chunks; logits (1, vocab) of its last position."""
    feed(model, embeddings[:, :-1], cache, step)
    return model.language_model(embeddings[:, -1:], cache)[:, -1]


def prefill_packed(model, embeddings: list[mx.array], caches: list[list]) -> mx.array:
    """Several prompts (1, L_i, D) through the LM in one packed pass, each into its own
    cache (`packed_hidden`); logits (n, vocab) of each prompt's last position."""
    lm = model.language_model
    lengths = [e.shape[1] for e in embeddings]
    h = lm.packed_hidden(mx.concatenate(embeddings, axis=1), lengths, caches)  # (1, ΣL, D)
    return lm.head(h[0, mx.array(np.cumsum(lengths) - 1)])


def embed_prompt(model, inputs: dict[str, np.ndarray], cache: list, step: int,
                 prompt_cache: PromptCache | None = None) -> mx.array:
    """The embeddings of the prompt tokens still to be run (at least one). With a
    prompt cache, the work up to the last image token is restored from it, or done
    into `cache` here and stored there."""
    ids_host = inputs["input_ids"]
    ids = mx.array(ids_host)
    images = image_inputs(inputs)
    if "pixel_values" not in images:
        return model.get_input_embeddings(ids)
    image_token = np.asarray(ids_host[0] == model.config.image_token_id)
    end = int(np.flatnonzero(image_token)[-1]) + 1 if image_token.any() else 0
    key = None
    if prompt_cache is not None and end < ids_host.shape[1]:
        key = PromptCache.key(ids_host, end, images)
        snapshots = prompt_cache.get(model, key)
        if snapshots is not None:
            for c, state in zip(cache, snapshots):
                c.restore(state)
            return model.language_model.embed(ids[:, end:])
    features = model.get_image_features(**{k: mx.array(v) for k, v in images.items()})
    if features.shape[0] != int(image_token.sum()):
        raise ValueError(f"the prompt has {int(image_token.sum())} image tokens but the images give "
                         f"{features.shape[0]} features")
    embeds = model.get_input_embeddings(ids, image_features=features)
    if key is None:
        return embeds
    feed(model, embeds[:, :end], cache, step)
    snapshots = [c.snapshot() for c in cache]
    mx.eval(snapshots)
    prompt_cache.put(model, key, snapshots)
    return embeds[:, end:]


def generate_tokens(model, inputs: dict[str, np.ndarray], sampling: SamplingOptions, *, eos_ids: set,
                    prompt_cache: PromptCache | None = None, prefill_step_size: int = 2048,
                    constraint: JsonConstraint | None = None) -> Iterator[tuple[int, float]]:
    """Yield (token, seconds to first token) for each new token of the processor's
    NumPy output `inputs`, at most sampling.max_tokens; the caller stops on EOS.
    With a `constraint`, each token is chosen among those it allows, and the tokens
    end where its value is complete and nothing but EOS may follow (constraint.done)."""
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    tic = time.perf_counter()
    lm = model.language_model
    cache = lm.make_cache()
    embeds = embed_prompt(model, inputs, cache, prefill_step_size, prompt_cache)
    penalty = sampling.repetition_penalty
    seen = prompt_seen(inputs["input_ids"], model.config.text_config.vocab_size, penalty)

    def choose(logits, allowed=None):
        nonlocal seen
        logits = apply_repetition_penalty(logits, seen, penalty)
        if allowed is not None:
            logits = mx.where(mx.array(allowed), logits, -mx.inf)
        y = sample(logits, sampling.temperature, sampling.top_p, sampling.min_p)
        if seen is not None:
            seen = mx.maximum(seen, mx.arange(seen.shape[1]) == y[:, None])
        return y

    if constraint is not None:
        yield from _constrained(lm, cache, choose, prefill(model, embeds, cache, prefill_step_size), tic,
                                sampling.max_tokens, eos_ids, constraint)
        return
    y = choose(prefill(model, embeds, cache, prefill_step_size))
    mx.eval(y)
    first = time.perf_counter() - tic
    for n in range(sampling.max_tokens):
        more = n + 1 < sampling.max_tokens
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


def _constrained(lm, cache, choose, logits, tic: float, max_tokens: int, eos_ids: set,
                 constraint: JsonConstraint) -> Iterator[tuple[int, float]]:
    """generate_tokens' loop under a grammar. The mask for step n+1 depends on token n,
    so the forward pass for n+1 starts first and the mask is computed on the CPU
    while it runs; only the masked sampling waits for both."""
    y = choose(logits, constraint.allowed())
    mx.eval(y)
    first = time.perf_counter() - tic
    for n in range(max_tokens):
        more = n + 1 < max_tokens
        if more:
            next_logits = lm(lm.embed(y[None]), cache)[:, -1]
        token = y.item()
        if token in eos_ids:
            yield token, first
            return
        if more:
            mx.async_eval(next_logits)
        constraint.advance(token)
        yield token, first
        if constraint.done:  # only EOS may follow: the caller ends here, no step is run for it
            return
        if more:
            y = choose(next_logits, constraint.allowed())
            mx.async_eval(y)


def stream_generate(model, processor, prompt: str, images: list | None = None, *,
                    max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                    min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                    min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                    longest_edge: int | None = None, do_image_splitting: bool | None = None,
                    sampling: SamplingOptions | None = None, image_options: ImageOptions | None = None,
                    prompt_cache: PromptCache | None = None, ignore_eos: bool = False,
                    prefill_step_size: int = 2048, json_schema: dict | None = None) -> Iterator[Response]:
    """Generate from a templated prompt (and its images: a list, or one image), one
    Response per new token.

    Sampling: options.SamplingOptions' defaults (the model card's), each keyword
    given winning over `sampling`. Image options: min/max_image_tokens for LFM2-VL,
    longest_edge for SmolVLM, do_image_splitting for both (None: the checkpoint's
    setting), winning over `image_options`. `prompt_cache` (a PromptCache) reuses a
    previous prompt's image work; None: nothing is reused.

    `json_schema` (a JSON Schema as a dict; {"type": "object"} for any JSON object)
    holds the text to it: finish_reason "stop" means it parses and validates,
    "length" that the budget ran out first (the text is then unfinished JSON).
    ValueError for a schema the grammar engine cannot enforce."""
    sampling = (sampling or SamplingOptions()).updated(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, seed=seed)
    image_options = (image_options or ImageOptions()).updated(
        min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens, longest_edge=longest_edge,
        do_image_splitting=do_image_splitting)
    constraint = None
    if json_schema is not None:
        if ignore_eos:
            raise ValueError("json_schema and ignore_eos cannot be combined (the JSON ends with EOS)")
        constraint = JsonConstraint(processor, json_schema, model.config.text_config.vocab_size)
    start = time.perf_counter()
    inputs = processor(prompt, images, image_options=image_options, return_numpy=True)
    n_prompt = inputs["input_ids"].shape[1]
    eos = set() if ignore_eos else set(processor.eos_token_ids)
    detok = StreamingDetokenizer(processor)
    preprocessing = time.perf_counter() - start
    tic, count = time.perf_counter(), 0
    for token, first in generate_tokens(model, inputs, sampling, eos_ids=eos, prompt_cache=prompt_cache,
                                        prefill_step_size=prefill_step_size, constraint=constraint):
        if count == 0:
            tic, ttft = time.perf_counter(), first + preprocessing
        count += 1
        rate = (count - 1) / (time.perf_counter() - tic) if count > 1 else 0.0
        if token in eos:
            yield Response("", token, n_prompt, count - 1, ttft, rate, "stop")
            return
        text = detok.add(token)
        reason = "stop" if constraint is not None and constraint.done else (
            "length" if count == sampling.max_tokens else None)
        if reason:
            text += detok.flush()
        yield Response(text, token, n_prompt, count, ttft, rate, reason)


def generate(model, processor, prompt: str, images: list | None = None, *,
             max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
             min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
             min_image_tokens: int | None = None, max_image_tokens: int | None = None,
             longest_edge: int | None = None, do_image_splitting: bool | None = None,
             sampling: SamplingOptions | None = None, image_options: ImageOptions | None = None,
             prompt_cache: PromptCache | None = None, json_schema: dict | None = None) -> str:
    """The whole generated text (see `stream_generate`)."""
    return "".join(r.text for r in stream_generate(
        model, processor, prompt, images, max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, seed=seed, min_image_tokens=min_image_tokens,
        max_image_tokens=max_image_tokens, longest_edge=longest_edge, do_image_splitting=do_image_splitting,
        sampling=sampling, image_options=image_options, prompt_cache=prompt_cache, json_schema=json_schema))
