"""Several prompts at once. Decoding one token streams every weight, so decoding
a token for many rows in the same step costs little more than for one.

Prompts admitted at the same time share their vision pass (views of one shape
go through the encoder together) and their prefill: up to PACK_TOKENS prompt
rows are packed into one sequence whose row-wise products run at once, while
each prompt's convolutions and attention see only its own rows and caches
(`packed_hidden`). Prompt processing is compute-bound and the CPU's matrix
products run faster on more rows: eight prompts of 74-281 tokens (1,281 in
all, 450M float32, 2-core x86) took 13.7-15.3 s one after another and
12.4-13.3 s in two packs (1.08-1.15x, 3 runs). Each row's caches then join
the running batch (batch_cache.py). A row that finishes leaves the batch and a
waiting prompt takes its slot (continuous batching). Each row's tokens are
those of the prompt run alone through `generate`: attention padding is masked
out and conv states never see it.

Seeds: with a seed and temperature > 0 every row draws from its own generator
seeded with it, so a row's text is `generate(..., seed=seed)`'s for that prompt
alone, whatever else is in the batch. Without a seed rows draw from MLX's
global generator.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import mlx.core as mx
import numpy as np

from .batch_cache import BatchKVCache, batch_caches
from .batch_memory import PACK_TOKENS, auto_batch_size
from .generate import Response, prefill, prefill_packed
from .options import ImageOptions, SamplingOptions
from .processor import StreamingDetokenizer, image_inputs
from .sample import apply_repetition_penalty, prompt_seen, sample


@dataclass
class _Row:
    index: int
    prompt_tokens: int
    max_tokens: int
    prompt_seconds: float
    detok: StreamingDetokenizer
    count: int = 0
    first: float = 0.0  # when its first token was chosen


class Batch:
    """The rows decoding together: their layer caches, last tokens, and sampling state.
    Rows join prefilled (`join`), step together (`step`), and leave (`keep`)."""

    def __init__(self, model, sampling: SamplingOptions):
        self.model, self.sampling = model, sampling
        self.lm = model.language_model
        self.caches: list = []
        self.rows: list[_Row] = []
        self.tokens: mx.array | None = None  # (B,) each row's last token
        self.seen: mx.array | None = None  # (B, vocab) tokens each row has seen, for the repetition penalty
        self.keys: list = []  # each row's PRNG key (seeded sampling)

    def start_row(self, input_ids: np.ndarray) -> tuple[mx.array | None, mx.array | None]:
        """A new row's sampling state: (seen (1, vocab) or None, PRNG key or None)."""
        seen = prompt_seen(input_ids, self.model.config.text_config.vocab_size, self.sampling.repetition_penalty)
        seeded = self.sampling.seed is not None and self.sampling.temperature > 0
        return seen, mx.random.key(self.sampling.seed) if seeded else None

    def choose(self, logits: mx.array, seen: mx.array | None, keys: list) -> tuple[mx.array, mx.array | None]:
        """(B, vocab) logits → (B,) tokens and the updated `seen`; advances `keys` in place."""
        s = self.sampling
        logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)
        if keys and keys[0] is not None:
            picked = []
            for i, key in enumerate(keys):
                keys[i], draw = mx.random.split(key)  # the global generator's rule: keep one half, draw with the other
                picked.append(sample(logits[i:i + 1], s.temperature, s.top_p, s.min_p, key=draw))
            y = mx.concatenate(picked)
        else:
            y = sample(logits, s.temperature, s.top_p, s.min_p)
        if seen is not None:
            seen = mx.maximum(seen, mx.arange(seen.shape[1]) == y[:, None])
        return y, seen

    def join(self, rows: list[_Row], caches: list[list], tokens: list[mx.array], seen: list, keys: list) -> None:
        """Add prefilled rows: their own (batch 1) layer caches, first tokens (1,) and sampling state."""
        if not self.caches:
            self.caches = batch_caches(caches[0])
        for layer, batch_cache in enumerate(self.caches):
            batch_cache.join([c[layer] for c in caches])
        self.rows += rows
        self.tokens = mx.concatenate(([] if self.tokens is None else [self.tokens]) + tokens)
        if seen[0] is not None:
            self.seen = mx.concatenate(([] if self.seen is None else [self.seen]) + seen)
        self.keys += keys

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (positions in `self.rows`)."""
        if len(rows) == len(self.rows):
            return
        for c in self.caches:
            c.keep(rows)
        self.rows = [self.rows[i] for i in rows]
        self.keys = [self.keys[i] for i in rows]
        idx = mx.array(rows, mx.int32)
        self.tokens = self.tokens[idx] if rows else None
        if self.seen is not None:
            self.seen = self.seen[idx] if rows else None

    def logits(self) -> mx.array:
        """(B, vocab) logits of the next position of every row, fed its last token."""
        mask = next((c.mask() for c in self.caches if isinstance(c, BatchKVCache)), None)
        return self.lm(self.lm.embed(self.tokens[:, None]), self.caches, mask)[:, -1]

    def step(self) -> list[int]:
        """Decode one token for every row; the new tokens."""
        self.tokens, self.seen = self.choose(self.logits(), self.seen, self.keys)
        mx.eval(self.tokens)
        return self.tokens.tolist()


def image_features(model, inputs: list[dict]) -> list[mx.array | None]:
    """Every prompt's image features (or None), the views of all prompts through the
    encoder in one call (same-shape views are batched there), split back per prompt."""
    out: list = [None] * len(inputs)
    with_images = [i for i, x in enumerate(inputs) if "pixel_values" in x]
    groups: dict = {}  # arrays can only be stacked when their trailing shapes agree
    for i in with_images:
        groups.setdefault(tuple(v.shape[1:] for v in image_inputs(inputs[i]).values()), []).append(i)
    image_token = model.config.image_token_id
    for rows in groups.values():
        arrays = {name: mx.array(np.concatenate([image_inputs(inputs[i])[name] for i in rows]))
                  for name in image_inputs(inputs[rows[0]])}
        features = model.get_image_features(**arrays)
        counts = [int((inputs[i]["input_ids"] == image_token).sum()) for i in rows]
        if features.shape[0] != sum(counts):
            raise ValueError(f"the prompts have {sum(counts)} image tokens but the images give "
                             f"{features.shape[0]} features")
        for i, start, n in zip(rows, itertools.accumulate([0] + counts), counts):
            out[i] = features[start:start + n]
    return out


def _packs(lengths: list[int], most: int) -> list[list[int]]:
    """Consecutive prompts (indices) grouped for one packed prefill each, a group's
    lengths summing to at most `most` (a longer prompt alone)."""
    groups: list[list[int]] = []
    total = most
    for i, n in enumerate(lengths):
        if total + n > most:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return groups


def _processed(waiting: Iterator, room: int, processor, image_options: ImageOptions) -> tuple[list, list]:
    """Up to `room` waiting (index, (prompt, images, max_tokens)) through the processor:
    [(index, max_tokens)] and their outputs. Each image is read in its turn and let go
    once processed (16 decoded 12 MP photos alone are ~580 MB)."""
    taken, inputs = [], []
    for index, (prompt, images, limit) in itertools.islice(waiting, room):
        inputs.append(processor(prompt, images, image_options=image_options, return_numpy=True))
        taken.append((index, limit))
    return taken, inputs


def _each(value) -> Iterable:
    """A per-prompt sequence as given, or one value for every prompt."""
    return itertools.repeat(value) if value is None or isinstance(value, (int, str)) else value


def stream_batch_generate(model, processor, prompts: str | Sequence[str], images: Iterable, *,
                          max_tokens: int | Sequence[int] | None = None, temperature: float | None = None,
                          top_p: float | None = None, min_p: float | None = None,
                          repetition_penalty: float | None = None, seed: int | None = None,
                          min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                          longest_edge: int | None = None, do_image_splitting: bool | None = None,
                          sampling: SamplingOptions | None = None, image_options: ImageOptions | None = None,
                          ignore_eos: bool = False, batch_size: int | None = None,
                          prefill_step_size: int = 2048) -> Iterator[tuple[int, Response]]:
    """Generate for many prompts at once, yielding (index, Response) per new token of
    each row as it comes (rows interleave; each row's Responses are in order).

    `prompts`: one templated prompt per entry of `images`, or one for all; `images`:
    per prompt, an image or a list of images (None: text only), read lazily, as
    slots open. `max_tokens`: one limit, or one per prompt. `batch_size`: rows
    decoding together; None chooses it from the available memory
    (batch_memory.py). Other options as `stream_generate`."""
    sampling = (sampling or SamplingOptions()).updated(
        temperature=temperature, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, seed=seed)
    limits = _each(max_tokens if max_tokens is not None else sampling.max_tokens)
    image_options = (image_options or ImageOptions()).updated(
        min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens, longest_edge=longest_edge,
        do_image_splitting=do_image_splitting)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(prompts, str) and hasattr(images, "__len__") and len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    eos = set() if ignore_eos else set(processor.eos_token_ids)
    waiting = enumerate(zip(_each(prompts), images, limits))
    batch = Batch(model, sampling)
    size, exhausted = batch_size, False

    def respond(row: _Row, token: int) -> tuple[Response, bool]:
        row.count += 1
        now = time.perf_counter()
        if row.count == 1:
            row.first = now
        rate = (row.count - 1) / (now - row.first) if row.count > 1 else 0.0
        if token in eos:
            return Response("", token, row.prompt_tokens, row.count - 1, row.prompt_seconds, rate, "stop"), True
        text = row.detok.add(token)
        done = row.count >= row.max_tokens
        if done:
            text += row.detok.flush()
        return Response(text, token, row.prompt_tokens, row.count, row.prompt_seconds, rate,
                        "length" if done else None), done

    while True:
        room = (size or 1) - len(batch.rows)
        if room > 0 and not exhausted:
            tic = time.perf_counter()
            taken, inputs = _processed(waiting, room, processor, image_options)
            exhausted = len(taken) < room
            if size is None and inputs:
                size = auto_batch_size(model, inputs[0], max(n for _, n in taken),
                                       batch.lm.embed(mx.array([[0]])).dtype.size)
            for index, limit in taken:
                if limit < 1:
                    raise ValueError(f"max_tokens must be at least 1, got {limit} for prompt {index}")
            # comprehensions: no loop variable keeps a prompt's features (and their batch's buffer) alive
            embeds = [model.get_input_embeddings(mx.array(x["input_ids"]), image_features=f)
                      for x, f in zip(inputs, image_features(model, inputs))]
            ids = [x["input_ids"] for x in inputs]  # (1, L) each; the pixels are done with
            del inputs
            starts = [batch.start_row(i) for i in ids]
            rows, caches, firsts, seens, keys = [], [], [], [], []
            for group in _packs([e.shape[1] for e in embeds], PACK_TOKENS):
                group_caches = [batch.lm.make_cache() for _ in group]
                if len(group) == 1:  # alone, in chunks of prefill_step_size
                    logits = prefill(model, embeds[group[0]], group_caches[0], prefill_step_size)
                else:
                    logits = prefill_packed(model, [embeds[i] for i in group], group_caches)
                for j, (i, cache) in enumerate(zip(group, group_caches)):
                    (index, limit), (seen, key) = taken[i], starts[i]
                    key_list = [key]
                    y, seen = batch.choose(logits[j:j + 1], seen, key_list)
                    mx.eval(y)
                    row = _Row(index, ids[i].shape[1], limit, time.perf_counter() - tic,
                               StreamingDetokenizer(processor))
                    response, done = respond(row, y.item())
                    yield index, response
                    if not done:
                        rows.append(row)
                        caches.append(cache)
                        firsts.append(y)
                        seens.append(seen)
                        keys.append(key_list[0])
            if rows:
                batch.join(rows, caches, firsts, seens, keys)
            del embeds  # not held while the batch decodes
            if len(batch.rows) < (size or 1) and not exhausted:
                continue  # rows that finished at once left room
        if not batch.rows:
            return
        keep = []
        for i, (row, token) in enumerate(zip(batch.rows, batch.step())):
            response, done = respond(row, token)
            yield row.index, response
            if not done:
                keep.append(i)
        batch.keep(keep)


def batch_generate(model, processor, prompts: str | Sequence[str], images: Iterable, *,
                   max_tokens: int | Sequence[int] | None = None, temperature: float | None = None,
                   top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                   seed: int | None = None, min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                   longest_edge: int | None = None, do_image_splitting: bool | None = None,
                   sampling: SamplingOptions | None = None, image_options: ImageOptions | None = None,
                   ignore_eos: bool = False, batch_size: int | None = None) -> list[str]:
    """Each prompt's whole generated text, in the order of the prompts (see `stream_batch_generate`)."""
    texts: dict[int, list[str]] = {}
    for index, response in stream_batch_generate(
            model, processor, prompts, images, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            min_p=min_p, repetition_penalty=repetition_penalty, seed=seed, min_image_tokens=min_image_tokens,
            max_image_tokens=max_image_tokens, longest_edge=longest_edge, do_image_splitting=do_image_splitting,
            sampling=sampling, image_options=image_options, ignore_eos=ignore_eos, batch_size=batch_size):
        texts.setdefault(index, []).append(response.text)
    return ["".join(texts.get(i, [])) for i in range(max(texts, default=-1) + 1)]
