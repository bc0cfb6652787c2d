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
        self.keys, self.values = with_room(self.keys, self.values, self.offset, k, v, self.step)
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


def with_room(keys: mx.array | None, values: mx.array | None, used: int, k: mx.array, v: mx.array,
              step: int) -> tuple[mx.array, mx.array]:
    """Key and value buffers (B, heads, T, hd) with room for k's and v's positions after
    their first `used`: as they are if they have it, else those `used` followed by zeros,
    grown by whole `step`s (None: new buffers), so a cache copies once per `step` tokens."""
    n = k.shape[2]
    if keys is not None and used + n <= keys.shape[2]:
        return keys, values
    grow = ((n + step - 1) // step) * step
    new_k = mx.zeros((*k.shape[:2], grow, k.shape[3]), k.dtype)
    new_v = mx.zeros((*v.shape[:2], grow, v.shape[3]), v.dtype)
    if keys is None:
        return new_k, new_v
    return (mx.concatenate([keys[..., :used, :], new_k], axis=2),
            mx.concatenate([values[..., :used, :], new_v], axis=2))


def causal_mask(length: int, offset: int) -> mx.array | None:
    """(L, offset+L) bool mask for L new queries after `offset` cached tokens; None for one query."""
    if length == 1:
        return None
    return (mx.arange(length)[:, None] + offset) >= mx.arange(offset + length)[None]
