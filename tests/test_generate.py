"""Sampling rules and generation behaviour on the tiny checkpoint."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_vlm_port import generate, stream_generate
from mlx_vlm_port.sample import apply_repetition_penalty, sample
from tests.images import synthetic_image

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]


def test_temperature_zero_is_argmax():
    logits = mx.array([[0.1, 3.0, -2.0, 2.9]])
    assert sample(logits, temperature=0.0).item() == 1


def test_min_p_keeps_only_tokens_near_the_best():
    mx.random.seed(0)
    logits = mx.log(mx.array([[0.5, 0.4, 0.06, 0.04]]))
    draws = {sample(logits, temperature=1.0, min_p=0.5).item() for _ in range(200)}
    assert draws == {0, 1}  # 0.06 < 0.5 × 0.5


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    mx.random.seed(0)
    logits = mx.log(mx.array([[0.05, 0.6, 0.3, 0.05]]))
    draws = {sample(logits, temperature=1.0, top_p=0.85).item() for _ in range(200)}
    assert draws == {1, 2}


def test_repetition_penalty_follows_transformers():
    logits = mx.array([[2.0, -2.0, 1.0]])
    seen = mx.array([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    np.testing.assert_allclose(np.asarray(out), [[1.0, -4.0, 1.0]])


@pytest.fixture(scope="module")
def prompt_and_image(tiny):
    _, processor = tiny
    return processor.apply_chat_template(MESSAGES), synthetic_image(320, 240, seed=5)


def test_stream_pieces_add_up_to_generate(tiny, prompt_and_image):
    model, processor = tiny
    prompt, image = prompt_and_image
    pieces = list(stream_generate(model, processor, prompt, [image], max_tokens=12, temperature=0.0))
    text = generate(model, processor, prompt, [image], max_tokens=12, temperature=0.0)
    assert "".join(r.text for r in pieces) == text
    ids = [r.token for r in pieces if r.finish_reason != "stop"]
    assert processor.decode(ids) == text
    assert pieces[-1].finish_reason in ("stop", "length")
    assert pieces[0].prompt_tokens > 50 and pieces[0].prompt_seconds > 0


def test_max_tokens_and_ignore_eos(tiny, prompt_and_image):
    model, processor = tiny
    prompt, image = prompt_and_image
    out = list(stream_generate(model, processor, prompt, [image], max_tokens=5, temperature=0.0, ignore_eos=True))
    assert len(out) == 5 and out[-1].finish_reason == "length" and out[-1].generation_tokens == 5


def test_stops_at_eos(tiny, prompt_and_image, monkeypatch):
    """Make the end-of-turn token the greedy choice after two tokens."""
    model, processor = tiny
    prompt, image = prompt_and_image
    eos = processor.tokenizer.token_to_id("<|im_end|>")
    first = [r.token for r in stream_generate(model, processor, prompt, [image], max_tokens=2,
                                              temperature=0.0, ignore_eos=True)]
    head = model.language_model.head

    def biased_head(h):
        logits = head(h)
        return logits + 1e4 * (mx.arange(logits.shape[-1]) == eos) * (h.shape[1] == 1)

    calls = {"n": 0}

    def head_after_two(h):
        calls["n"] += 1
        return biased_head(h) if calls["n"] > 2 else head(h)

    monkeypatch.setattr(model.language_model, "head", head_after_two)
    out = list(stream_generate(model, processor, prompt, [image], max_tokens=10, temperature=0.0))
    assert [r.token for r in out[:2]] == first
    assert out[-1].token == eos and out[-1].finish_reason == "stop" and out[-1].text == ""
    assert len(out) == 3


def test_text_only_prompt(tiny):
    model, processor = tiny
    prompt = processor.apply_chat_template([{"role": "user", "content": "Hello there"}])
    assert "<image>" not in prompt
    assert isinstance(generate(model, processor, prompt, max_tokens=4, temperature=0.0), str)


def test_seeded_sampling_is_reproducible(tiny, prompt_and_image):
    model, processor = tiny
    prompt, image = prompt_and_image
    a = generate(model, processor, prompt, [image], max_tokens=8, temperature=1.0, min_p=0.0, seed=7)
    b = generate(model, processor, prompt, [image], max_tokens=8, temperature=1.0, min_p=0.0, seed=7)
    assert a == b


def test_follow_up_on_the_same_image_reuses_its_work(tiny, monkeypatch):
    """A second question about the same image skips the vision tower and gives
    the same tokens as a fresh run."""
    from mlx_vlm_port import PromptCache

    model, processor = tiny
    image = synthetic_image(400, 300, seed=9)
    cache = PromptCache()

    def ask(question, prompt_cache):
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}])
        return [r.token for r in stream_generate(model, processor, prompt, [image], max_tokens=6,
                                                 temperature=0.0, ignore_eos=True, prompt_cache=prompt_cache)]

    ask("Describe this image.", cache)
    calls = []
    tower = model.vision_tower.__call__
    monkeypatch.setattr(type(model.vision_tower), "__call__",
                        lambda self, *a, **k: calls.append(1) or tower(*a, **k))
    reused = ask("What colour is it?", cache)
    assert calls == []
    cache.clear()
    assert ask("What colour is it?", cache) == reused and calls == [1]
    assert ask("What colour is it?", None) == reused and calls == [1, 1]  # no cache: no reuse, same tokens
    other = synthetic_image(400, 300, seed=10)  # same size and ids, other pixels: no reuse
    prompt = processor.apply_chat_template(MESSAGES)
    list(stream_generate(model, processor, prompt, [other], max_tokens=1, prompt_cache=cache))
    assert len(calls) == 3 and len(cache) == 1  # bounded: the other image's work replaced the first
