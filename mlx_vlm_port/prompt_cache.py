"""Reuse of a prompt's image work, owned by the caller: a follow-up question
about the same image skips the vision encoder and the prefill of everything up
to the end of the image block (only the new question's tokens are processed).

    cache = PromptCache()                      # at most one prompt's work kept
    generate(model, processor, prompt, [image], prompt_cache=cache)
    generate(model, processor, follow_up, [image], prompt_cache=cache)  # reuses it

A plain container: generate.py computes the key from the processor's NumPy
output and stores the layer caches' snapshots here.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

import numpy as np


class PromptCache:
    """The layer-cache snapshots of the last `max_entries` image prompts (up to their
    last image token), by model and a key of the prompt's ids and pixels."""

    def __init__(self, max_entries: int = 1):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, bytes], tuple[weakref.ref, list]] = OrderedDict()

    @staticmethod
    def key(input_ids: np.ndarray, end: int, images: dict[str, np.ndarray]) -> bytes:
        """A digest of the first `end` prompt ids and of every image array (host data)."""
        h = hashlib.sha1(np.ascontiguousarray(input_ids[0, :end]).tobytes())
        for name in sorted(images):
            h.update(name.encode() + np.ascontiguousarray(images[name]).tobytes())
        return h.digest()

    def get(self, model, key: bytes) -> list | None:
        """The snapshots stored for this model and key, or None."""
        entry = self._entries.get((id(model), key))
        if entry is None or entry[0]() is not model:
            return None
        self._entries.move_to_end((id(model), key))
        return entry[1]

    def put(self, model, key: bytes, snapshots: list) -> None:
        self._entries[(id(model), key)] = (weakref.ref(model), snapshots)
        self._entries.move_to_end((id(model), key))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
