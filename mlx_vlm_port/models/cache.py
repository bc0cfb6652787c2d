"""The key/value cache of one attention layer and its causal mask (shared by
every language model here)."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Keys and values of one attention layer, grown in steps to avoid a copy per token."""

    step = 256

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        n = k.shape[2]
        if self.keys is None or self.offset + n > self.keys.shape[2]:
            grow = ((n + self.step - 1) // self.step) * self.step
            new_k = mx.zeros((*k.shape[:2], grow, k.shape[3]), k.dtype)
            new_v = mx.zeros((*v.shape[:2], grow, v.shape[3]), v.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., : self.offset, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., : self.offset, :], new_v], axis=2)
        self.keys[..., self.offset: self.offset + n, :] = k
        self.values[..., self.offset: self.offset + n, :] = v
        self.offset += n
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @property
    def state(self):
        return self.keys, self.values

    def snapshot(self):
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :], self.offset

    def restore(self, snapshot) -> None:
        # The next update grows (copies) these arrays, so the snapshot stays intact.
        self.keys, self.values, self.offset = snapshot


def causal_mask(length: int, offset: int) -> mx.array | None:
    """(L, offset+L) bool mask for L new queries after `offset` cached tokens; None for one query."""
    if length == 1:
        return None
    return (mx.arange(length)[:, None] + offset) >= mx.arange(offset + length)[None]
