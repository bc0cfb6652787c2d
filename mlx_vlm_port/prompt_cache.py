"""Reuse the last prompt's image work: a follow-up question about the same
image skips the vision encoder and the prefill of everything up to the end
of the image block (only the new question's tokens are processed)."""

from __future__ import annotations

import hashlib
import weakref

import mlx.core as mx
import numpy as np

from .processor import image_inputs

# (weak ref to the model, key of the prompt up to its last image token, cache
# snapshots there); one entry: the app asks follow-ups about the latest image.
_last: tuple | None = None


def _prefix(model, inputs: dict) -> tuple[int, bytes]:
    """Length of the prompt up to its last image token, and a key naming it (ids and pixels)."""
    ids = np.asarray(inputs["input_ids"][0])
    end = int(np.flatnonzero(ids == model.config.image_token_id)[-1]) + 1
    h = hashlib.sha1(ids[:end].tobytes())
    images = image_inputs(inputs)
    for name in sorted(images):
        h.update(name.encode() + np.asarray(images[name]).tobytes())
    return end, h.digest()


def feed(model, embeddings: mx.array, cache: list, step: int) -> None:
    """Run embeddings (1, n, D) through the LM into `cache`, `step` tokens at a time
    (bounding the attention scores' memory), computing no logits."""
    for start in range(0, embeddings.shape[1], step):
        model.language_model.hidden(embeddings[:, start:start + step], cache)
        mx.eval([c.state for c in cache])


def _image_embeddings(model, ids: mx.array, inputs: dict) -> mx.array:
    """On the CPU the vision pass reuses its own freed buffers (load.keep_freed_buffers),
    but they fit nothing else: the cache is emptied before and after it rather than
    held through the rest of the request (peak RSS)."""
    on_cpu = mx.default_device() == mx.cpu
    if on_cpu:
        mx.clear_cache()
    embeds = model.get_input_embeddings(ids, **image_inputs(inputs))
    if on_cpu:
        mx.eval(embeds)
        mx.clear_cache()
    return embeds


def prepare(model, inputs: dict, cache: list, step: int) -> mx.array:
    """Fill `cache` with what can be reused or cheaply computed ahead; return the
    embeddings of the prompt tokens still to be run (at least one)."""
    ids = inputs["input_ids"]
    if "pixel_values" not in inputs:
        return model.get_input_embeddings(ids)
    global _last
    end, key = _prefix(model, inputs)
    if end < ids.shape[1] and _last is not None and _last[0]() is model and _last[1] == key:
        for c, state in zip(cache, _last[2]):
            c.restore(state)
        return model.language_model.embed(ids[:, end:])
    embeds = _image_embeddings(model, ids, inputs)
    if end >= ids.shape[1]:
        return embeds
    feed(model, embeds[:, :end], cache, step)
    snapshots = [c.snapshot() for c in cache]
    mx.eval(snapshots)
    _last = (weakref.ref(model), key, snapshots)
    return embeds[:, end:]


def forget() -> None:
    global _last
    _last = None
