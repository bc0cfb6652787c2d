"""The CPU backend's numpy decoding step (backends/cpu/decode.py) against MLX's own
layers: the same logits token after token, the caches left as MLX leaves them,
and MLX's path wherever the step does not apply."""

import threading

import mlx.core as mx
import numpy as np
import pytest

from mlx_vlm_port.backends.cpu import decode
from mlx_vlm_port.load import load_model
from mlx_vlm_port.models.cache import KVCache
from tests.tiny_checkpoint import make_tiny_checkpoint


@pytest.fixture
def steps_taken(monkeypatch) -> list:
    """Each numpy step's result (None where it declined)."""
    taken, step = [], decode.step

    def counted(*args):
        taken.append(step(*args))
        return taken[-1]

    monkeypatch.setattr(decode, "step", counted)
    return taken


def decoded(model, prompt: int, steps: int, cache=None) -> np.ndarray:
    """Logits (steps + 1, vocab): the last prompt position's, then each step's on a
    fixed token sequence (no sampling, so both sides read the same tokens)."""
    lm = model.language_model
    cache = lm.make_cache() if cache is None else cache
    ids = mx.array([[1] + [(13 * i) % 90 + 5 for i in range(prompt - 1)]])
    out = [lm(lm.embed(ids), cache)[0, -1]]
    for i in range(steps):
        out.append(lm(lm.embed(mx.array([[(7 * i) % 90 + 5]])), cache)[0, -1])
    return np.stack([np.asarray(o) for o in out])


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    err = np.abs(got - want).max(axis=-1) / np.abs(want).max(axis=-1)
    assert err.max() < 1e-4, f"max relative error {err.max():.2e} at step {err.argmax()}"
    assert (got.argmax(-1) == want.argmax(-1)).all()


def numpy_steps_match_mlx(path, prompt: int, steps: int, steps_taken: list):
    """Every step after the prompt runs in numpy and gives MLX's layers' logits; the plain model."""
    plain = load_model(path, cpu_backend=False)
    want = decoded(plain, prompt, steps)
    got = decoded(load_model(path, cpu_backend=True), prompt, steps)
    assert len(steps_taken) == steps and all(h is not None for h in steps_taken)
    assert_close(got, want)
    return plain


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_numpy_steps_give_mlx_logits(tiny_path, bits, steps_taken):
    """float32 weights, and quantized ones through their float copies: every step
    past a 250-token prompt (the KV cache grows at 256) matches MLX's layers."""
    want = decoded(load_model(tiny_path, bits=bits, group_size=32, cpu_backend=False), 250, 20)
    got = decoded(load_model(tiny_path, bits=bits, group_size=32, cpu_backend=True, low_memory=False), 250, 20)
    assert len(steps_taken) == 20 and all(h is not None for h in steps_taken)
    assert_close(got, want)


def test_each_block_runs_as_two_halves_on_two_threads(tiny_path, steps_taken, monkeypatch):
    """Every conv, attention and MLP block of a step runs as two halves, one on each
    thread, which together cover all its channels, kv heads or hidden features."""
    ran = []
    for name in ("_conv_half", "_attention_half", "_mlp_half"):
        def recorded(part, *args, _name=name, _fn=getattr(decode, name)):
            ran.append((_name, part.start, part.stop, threading.get_ident()))
            _fn(part, *args)
        monkeypatch.setattr(decode, name, recorded)
    c = numpy_steps_match_mlx(tiny_path, 40, 3, steps_taken).config.text_config
    sizes = {"_conv_half": c.hidden_size, "_attention_half": c.num_key_value_heads, "_mlp_half": c.ff_dim}
    kinds = ["_attention_half" if t == "full_attention" else "_conv_half" for t in c.layer_types]
    blocks = [ran[i:i + 2] for i in range(0, len(ran), 2)]
    assert [b[0][0] for b in blocks] == [k for k in kinds for k in (k, "_mlp_half")] * 3
    for (name, start0, stop0, thread0), (_, start1, stop1, thread1) in blocks:
        assert thread0 != thread1
        assert sorted([(start0, stop0), (start1, stop1)]) == [(0, sizes[name] // 2), (sizes[name] // 2, sizes[name])]


def test_one_kv_head_leaves_one_half_without_attention(tmp_path, steps_taken):
    """With a single kv head one thread attends with it and the other adds nothing."""
    path = make_tiny_checkpoint(tmp_path / "mqa", seed=5, text_overrides={"num_key_value_heads": 1})
    plain = numpy_steps_match_mlx(path, 12, 6, steps_taken)
    assert {layer.self_attn.n_kv for layer in plain.language_model.model.layers if layer.is_attention} == {1}


def test_conv_bias_and_untied_head(tmp_path, steps_taken):
    path = make_tiny_checkpoint(tmp_path / "biased", seed=3, tie=False, text_overrides={"conv_bias": True})
    numpy_steps_match_mlx(path, 9, 12, steps_taken)


def test_packed_weights_keep_mlx_path(tiny_path, steps_taken):
    """low_memory: quantized layers without float copies: the step declines before
    touching the caches, and MLX's layers give the same logits as without the backend."""
    want = decoded(load_model(tiny_path, bits=4, group_size=32, cpu_backend=False), 30, 6)
    got = decoded(load_model(tiny_path, bits=4, group_size=32, cpu_backend=True, low_memory=True), 30, 6)
    assert steps_taken == [None] * 6
    assert_close(got, want)


def test_a_one_token_prompt_starts_empty_caches(tiny_path, steps_taken):
    want = decoded(load_model(tiny_path, cpu_backend=False), 1, 5)
    got = decoded(load_model(tiny_path, cpu_backend=True), 1, 5)
    assert len(steps_taken) == 6 and all(h is not None for h in steps_taken)
    assert_close(got, want)


def test_snapshots_survive_in_place_steps(tiny_path, steps_taken):
    """The step writes keys and values into the cache's buffers in place; a snapshot
    taken before (a prompt cache entry: views of those buffers) still holds what it
    held, and restoring it replays the same logits."""
    model = load_model(tiny_path, cpu_backend=True)
    lm = model.language_model
    cache = lm.make_cache()
    decoded(model, 40, 0, cache)
    snapshots = [c.snapshot() for c in cache]
    mx.eval(snapshots)
    before = [[np.array(a) for a in s if isinstance(a, mx.array)] for s in snapshots]
    buffers = [c.keys for c in cache if isinstance(c, KVCache)]
    first = decoded(model, 1, 8, cache)[1:]
    assert all(c.keys is k for c, k in zip([c for c in cache if isinstance(c, KVCache)], buffers))  # in place
    for s, held in zip(snapshots, before):
        for a, b in zip([a for a in s if isinstance(a, mx.array)], held):
            np.testing.assert_array_equal(np.asarray(a), b)
    replay = lm.make_cache()
    for c, s in zip(replay, snapshots):
        c.restore(s)
    np.testing.assert_allclose(decoded(model, 1, 8, replay)[1:], first, rtol=1e-5, atol=1e-6)


def test_a_replaced_weight_is_read(tiny_path, steps_taken):
    """Views are kept between steps; a weight replaced after a step (load_weights,
    update) is the one the next steps read, as MLX's layers do."""
    models = [load_model(tiny_path, cpu_backend=on) for on in (False, True)]
    before = decoded(models[1], 5, 2)
    for m in models:
        mlp = m.language_model.model.layers[0].feed_forward
        mlp.w1.weight = mlp.w1.weight * 3
    want, got = (decoded(m, 5, 2) for m in models)
    assert np.abs(got - before).max() > 1e-3
    assert len(steps_taken) == 4 and all(h is not None for h in steps_taken)
    assert_close(got, want)


def batch_decoded(model, prompts: list[int], steps: int, join_at: int, leave_at: int) -> tuple[dict, list]:
    """Each row's logits through a decoding batch, and the batch's caches: rows 0 and 1
    (prompt lengths prompts[0], prompts[1]) start it, row 2 joins after `join_at`
    steps, row 0 leaves after `leave_at`; every row is fed a fixed token sequence."""
    from mlx_vlm_port.batch_cache import BatchKVCache, batch_caches

    lm = model.language_model
    out: dict[int, list] = {}

    def prefilled(i):
        cache = lm.make_cache()
        ids = mx.array([[1] + [(11 * j + i) % 90 + 5 for j in range(prompts[i] - 1)]])
        out[i] = [np.asarray(lm(lm.embed(ids), cache)[0, -1])]
        return cache

    rows, caches = [0, 1], batch_caches(lm.make_cache())
    for layer, c in enumerate(caches):
        c.join([r[layer] for r in [prefilled(0), prefilled(1)]])
    for step in range(steps):
        if step == join_at:
            row = prefilled(2)
            for layer, c in enumerate(caches):
                c.join([row[layer]])
            rows.append(2)
        if step == leave_at:
            for c in caches:
                c.keep([k for k, r in enumerate(rows) if r != 0])
            rows.remove(0)
        tokens = mx.array([[(7 * step + 3 * r) % 90 + 5] for r in rows])
        mask = next(c.mask() for c in caches if isinstance(c, BatchKVCache))
        logits = lm(lm.embed(tokens), caches, mask)[:, -1]
        for k, r in enumerate(rows):
            out[r].append(np.asarray(logits[k]))
    return {r: np.stack(v) for r, v in out.items()}, caches


@pytest.mark.parametrize("bits", [None, 8])
def test_batched_steps_give_mlx_batch_logits(tiny_path, bits, steps_taken):
    """A decoding batch (rows left-padded to the longest, a row joining, one leaving,
    the keys' buffers growing past 256 positions) steps in numpy, all rows at once,
    with the logits of MLX's layers on the same batch caches."""
    kw = dict(bits=bits, group_size=32)
    args = ([250, 31, 7], 12, 3, 8)  # row 0 pads the others; positions cross 256 at step 6
    want, mlx_caches = batch_decoded(load_model(tiny_path, cpu_backend=False, **kw), *args)
    got, caches = batch_decoded(load_model(tiny_path, cpu_backend=True, low_memory=False, **kw), *args)
    assert len(steps_taken) == 12 and all(h is not None and h.shape[0] > 1 for h in steps_taken)
    for r in want:
        assert_close(got[r], want[r])
    for c, m in zip(caches, mlx_caches):  # the bookkeeping MLX's layers would continue from
        if hasattr(m, "end"):
            assert (c.end, c.pad, c.offset.tolist()) == (m.end, m.pad, m.offset.tolist())
        else:
            assert c.state.shape == m.state.shape


def test_larger_batches_take_mlx_steps_and_hand_back(tiny_path, steps_taken, monkeypatch):
    """Past FEW_ROWS rows a batch steps through MLX's layers; the same caches then go
    on in numpy once a row has left, and back: the logits match MLX's all along."""
    monkeypatch.setattr(decode, "FEW_ROWS", 2)
    args = ([40, 31, 7], 12, 3, 8)  # three rows from step 3 to step 7
    want, _ = batch_decoded(load_model(tiny_path, cpu_backend=False), *args)
    got, _ = batch_decoded(load_model(tiny_path, cpu_backend=True), *args)
    assert [h.shape[0] for h in steps_taken] == [2] * 7
    for r in want:
        assert_close(got[r], want[r])
