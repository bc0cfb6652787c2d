"""The layer caches of a decoding batch, built from rows prefilled into caches of their own.

Attention: the rows' keys and values side by side, each row left-padded to the
longest; the padded keys are masked out (`mask`) and each row's RoPE position
is its own length (`offset`, one per row). Short convolutions: each row's last
L_cache−1 inputs, stacked; a decoding step feeds every row one real token, so
no padding ever enters a conv state.
"""

from __future__ import annotations

import mlx.core as mx

from .models.cache import KVCache, with_room


def _left_pad(x: mx.array, n: int) -> mx.array:
    """(B, H, T, hd) → (B, H, n+T, hd), n zero positions in front."""
    if n == 0:
        return x
    return mx.concatenate([mx.zeros((*x.shape[:2], n, x.shape[3]), x.dtype), x], axis=2)


class BatchKVCache:
    """Keys and values (B, heads, T, hd) of one attention layer for B rows; row b's
    first pad[b] positions are padding."""

    step = 256

    def __init__(self):
        self.keys = self.values = None
        self.end = 0  # positions written (padding included), the same for every row
        self.pad: list[int] = []
        self.offset = mx.array([], mx.int32)  # each row's real length: its next RoPE position

    def _set(self, keys: mx.array, values: mx.array, pad: list[int]) -> None:
        self.keys, self.values, self.pad, self.end = keys, values, pad, keys.shape[2]
        self.offset = mx.array([self.end - p for p in pad], mx.int32)

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        n = k.shape[2]
        self.keys, self.values = with_room(self.keys, self.values, self.end, k, v, self.step)
        self.keys[..., self.end: self.end + n, :] = k
        self.values[..., self.end: self.end + n, :] = v
        self.end += n
        self.offset = self.offset + n
        return self.keys[..., : self.end, :], self.values[..., : self.end, :]

    @property
    def state(self):
        return self.keys, self.values

    def mask(self, n: int = 1) -> mx.array | None:
        """(B, 1, 1, end+n) bool for one new token per row: every real key, no padded
        one; None when no row is padded."""
        if not any(self.pad):
            return None
        keys = mx.arange(self.end + n)[None]
        return (keys >= mx.array(self.pad)[:, None])[:, None, None, :]

    def join(self, rows: list[KVCache]) -> None:
        """Append rows, each with its own caches (batch 1), re-padding everyone to the longest."""
        parts = [] if self.keys is None else [(self.keys[..., : self.end, :], self.values[..., : self.end, :],
                                              self.pad)]
        parts += [(c.keys[..., : c.offset, :], c.values[..., : c.offset, :], [0]) for c in rows]
        length = max(k.shape[2] for k, _, _ in parts)
        keys, values, pad = [], [], []
        for k, v, p in parts:
            extra = length - k.shape[2]
            keys.append(_left_pad(k, extra))
            values.append(_left_pad(v, extra))
            pad += [q + extra for q in p]
        self._set(mx.concatenate(keys), mx.concatenate(values), pad)

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), dropping padding no kept row needs."""
        if not rows:
            self.__init__()
            return
        pad = [self.pad[i] for i in rows]
        trim, idx = min(pad), mx.array(rows)
        self._set(self.keys[idx, :, trim: self.end], self.values[idx, :, trim: self.end], [p - trim for p in pad])


class BatchConvCache:
    """The last L_cache−1 inputs (B, L_cache−1, D) of one short-conv layer for B rows."""

    def __init__(self):
        self.state = None
        self.offset = 0  # unused in a batch (each row's length lives in the attention caches)

    def join(self, rows: list) -> None:
        states = ([] if self.state is None else [self.state]) + [c.state for c in rows]
        self.state = mx.concatenate(states)

    def keep(self, rows: list[int]) -> None:
        self.state = self.state[mx.array(rows)] if rows else None


def batch_caches(row_cache: list) -> list:
    """Empty batch caches matching one row's layer caches (KV for attention, conv state otherwise)."""
    return [BatchKVCache() if isinstance(c, KVCache) else BatchConvCache() for c in row_cache]
