"""Batched generation: every row equals its prompt run alone (tokens exactly,
logits within 1e-4 relative), for LFM2-VL and SmolVLM, with images of different
sizes (so prompts of different lengths) joining and leaving the batch."""

import os

import mlx.core as mx
import numpy as np
import pytest

from mlx_vlm_port import batch_generate, stream_batch_generate, stream_generate
from mlx_vlm_port.batch import Batch, _packs, _Row, image_features
from mlx_vlm_port.batch_memory import MAX_AUTO, BatchMemoryError, auto_batch_size
from mlx_vlm_port.generate import prefill, prefill_packed
from mlx_vlm_port.options import SamplingOptions
from mlx_vlm_port.processor import StreamingDetokenizer
from tests.images import synthetic_image
from tests.tiny_idefics3 import make_tiny_idefics3_checkpoint

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
SIZES = [(320, 240), (64, 200), (512, 512), (150, 90), (800, 300)]


@pytest.fixture(scope="module")
def smolvlm(tmp_path_factory):
    from mlx_vlm_port import load

    return load(make_tiny_idefics3_checkpoint(tmp_path_factory.mktemp("smol") / "smol", seed=0))


@pytest.fixture(params=["lfm2_vl", "idefics3"])
def family(request, tiny, smolvlm):
    """(model, processor, prompt, images) with prompts of several lengths."""
    model, processor = tiny if request.param == "lfm2_vl" else smolvlm
    images = [synthetic_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    prompt = processor.apply_chat_template(MESSAGES)
    lengths = {processor(prompt, [im], return_numpy=True)["input_ids"].shape[1] for im in images}
    assert len(lengths) >= 3, lengths  # the batch must mix prompt lengths to test the padding
    return model, processor, prompt, images


def alone(model, processor, prompt, image, **kw) -> list[int]:
    return [r.token for r in stream_generate(model, processor, prompt, [image], **kw)]


def batched(model, processor, prompt, images, **kw) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {}
    for index, r in stream_batch_generate(model, processor, prompt, images, **kw):
        tokens.setdefault(index, []).append(r.token)
    return tokens


def test_greedy_rows_equal_each_prompt_alone_while_rows_leave_and_join(family):
    """Two slots for five prompts with different limits: rows leave early and waiting
    ones take their slots, next to rows of other lengths."""
    model, processor, prompt, images = family
    limits = [3, 9, 5, 2, 7]
    got = batched(model, processor, prompt, images, max_tokens=limits, temperature=0.0, ignore_eos=True,
                  batch_size=2)
    for i, image in enumerate(images):
        assert got[i] == alone(model, processor, prompt, image, max_tokens=limits[i], temperature=0.0,
                               ignore_eos=True)
        assert len(got[i]) == limits[i]


def test_images_are_let_go_once_processed(tiny):
    """A batch holds processor outputs, not decoded images: while six rows decode, at
    most the last two images are alive (zip and enumerate each keep their last tuple)
    where all six were (a folder of large photos held a whole batch of them)."""
    import weakref

    model, processor = tiny
    prompt = processor.apply_chat_template(MESSAGES)
    given = []

    def tracked(image):
        given.append(weakref.ref(image))
        return image

    def images():  # holds no reference itself while suspended
        for i in range(6):
            yield tracked(synthetic_image(40 + 8 * i, 48, seed=i))

    alive = []
    for _, r in stream_batch_generate(model, processor, prompt, images(), max_tokens=3, batch_size=6,
                                      ignore_eos=True):
        alive.append(sum(ref() is not None for ref in given))
    assert len(given) == 6 and len(alive) == 18 and max(alive) <= 2


def test_batch_generate_texts_in_prompt_order(tiny):
    model, processor = tiny
    prompt = processor.apply_chat_template(MESSAGES)
    images = [synthetic_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES[:3])]
    texts = batch_generate(model, processor, prompt, images, max_tokens=6, temperature=0.0, batch_size=3)
    from mlx_vlm_port import generate

    assert texts == [generate(model, processor, prompt, [im], max_tokens=6, temperature=0.0) for im in images]


def test_seeded_sampling_and_repetition_penalty_per_row(family):
    """A seed means each row's own generator: its text equals generate(seed=...) alone."""
    model, processor, prompt, images = family
    kw = dict(max_tokens=6, temperature=0.9, repetition_penalty=1.3, seed=11, ignore_eos=True)
    got = batched(model, processor, prompt, images[:3], batch_size=3, **kw)
    for i, image in enumerate(images[:3]):
        assert got[i] == alone(model, processor, prompt, image, **kw)


def _solo_logits(model, processor, prompt, image, tokens: list[int]) -> list[np.ndarray]:
    """Logits of the prompt alone, then after each of `tokens` (teacher-forced)."""
    lm = model.language_model
    x = processor(prompt, [image], return_numpy=True)
    cache = lm.make_cache()
    embeds = model.get_input_embeddings(mx.array(x["input_ids"]), image_features=image_features(model, [x])[0])
    out = [prefill(model, embeds, cache)]
    for t in tokens:
        out.append(lm(lm.embed(mx.array([[t]])), cache)[:, -1])
    return [np.array(o[0].astype(mx.float32)) for o in out]


def _admit(batch, model, processor, prompt, image, index):
    lm = model.language_model
    x = processor(prompt, [image], return_numpy=True)
    cache = lm.make_cache()
    embeds = model.get_input_embeddings(mx.array(x["input_ids"]), image_features=image_features(model, [x])[0])
    logits = prefill(model, embeds, cache)
    row = _Row(index, x["input_ids"].shape[1], 100, 0.0, StreamingDetokenizer(processor))
    batch.join([row], [cache], [mx.argmax(logits, axis=-1)], [None], [None])


def test_logits_match_alone_within_1e_4(family):
    """Row 2 joins after two steps and row 0 leaves after four; every step's logits of
    every row equal the prompt alone's (same fed tokens) within 1e-4 relative."""
    model, processor, prompt, images = family
    images = images[:3]
    steps = 6
    feeds = [[(7 * i + 3 * t) % 50 + 1 for t in range(steps)] for i in range(3)]
    solo = [_solo_logits(model, processor, prompt, im, f) for im, f in zip(images, feeds)]
    batch = Batch(model, SamplingOptions(temperature=0.0))
    _admit(batch, model, processor, prompt, images[0], 0)
    _admit(batch, model, processor, prompt, images[1], 1)
    fed = {0: 0, 1: 0}
    for step in range(steps + 2):
        if step == 2:
            _admit(batch, model, processor, prompt, images[2], 2)
            fed[2] = 0
        if step == 4:
            batch.keep([i for i, r in enumerate(batch.rows) if r.index != 0])
        indices = [r.index for r in batch.rows if fed[r.index] < steps]
        batch.keep([i for i, r in enumerate(batch.rows) if fed[r.index] < steps])
        if not indices:
            break
        batch.tokens = mx.array([feeds[i][fed[i]] for i in indices])
        logits = np.array(batch.logits().astype(mx.float32))
        for row, i in enumerate(indices):
            fed[i] += 1
            want = solo[i][fed[i]]
            scale = np.abs(want).max()
            np.testing.assert_allclose(logits[row], want, rtol=0, atol=1e-4 * scale)
    assert fed == {0: 4, 1: steps, 2: steps}


def _state(cache) -> list:
    """A layer cache's contents as numpy arrays and ints (its snapshot)."""
    return [np.array(a) if isinstance(a, mx.array) else a for a in cache.snapshot()]


def test_packed_prefill_equals_each_prompt_alone(family):
    """Prompts of different lengths packed into one prefill: each one's last logits and
    every layer cache (keys, values, conv state, offset) equal its prefill alone's, so no
    row saw another prompt's rows through a convolution or attention."""
    model, processor, prompt, images = family
    lm = model.language_model
    inputs = [processor(prompt, [im], return_numpy=True) for im in images[:4]]
    embeds = [model.get_input_embeddings(mx.array(x["input_ids"]), image_features=f)
              for x, f in zip(inputs, image_features(model, inputs))]
    assert len({e.shape[1] for e in embeds}) >= 3
    caches = [lm.make_cache() for _ in embeds]
    logits = np.array(prefill_packed(model, embeds, caches))
    assert logits.shape == (len(embeds), model.config.text_config.vocab_size)
    for i, e in enumerate(embeds):
        cache = lm.make_cache()
        want = np.array(prefill(model, e, cache)[0])
        np.testing.assert_allclose(logits[i], want, rtol=0, atol=1e-4 * np.abs(want).max())
        for packed, alone in zip(caches[i], cache):
            for got, expected in zip(_state(packed), _state(alone)):
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_prompts_pack_in_order_up_to_the_limit():
    assert _packs([300, 500, 224, 400, 2000, 10, 5], 1024) == [[0, 1, 2], [3], [4], [5, 6]]
    assert _packs([], 1024) == []


def test_vision_views_together_equal_one_at_a_time(family):
    model, processor, prompt, images = family
    inputs = [processor(prompt, [im], return_numpy=True) for im in images]
    together = image_features(model, inputs)
    for x, f in zip(inputs, together):
        one = image_features(model, [x])[0]
        np.testing.assert_allclose(np.array(f), np.array(one), rtol=1e-4, atol=1e-5)


def test_automatic_batch_size_follows_the_available_memory(tiny):
    model, processor = tiny
    x = processor(processor.apply_chat_template(MESSAGES), [synthetic_image(320, 240, seed=0)], return_numpy=True)
    with pytest.raises(BatchMemoryError, match="one image needs about"):
        auto_batch_size(model, x, 64, 4, available=1 << 16)
    least = next(a for a in (1 << n for n in range(16, 40)) if _fits(model, x, a))
    sizes = [auto_batch_size(model, x, 64, 4, available=least * k) for k in (1, 4, 8, 1 << 20)]
    assert sizes[0] >= 1 and sizes == sorted(sizes) and sizes[1] > 1 and sizes[-1] == MAX_AUTO
    assert auto_batch_size(model, x, 4096, 4, available=least * 4) < sizes[1]  # longer captions, fewer rows


def _fits(model, x, available) -> bool:
    try:
        auto_batch_size(model, x, 64, 4, available=available)
        return True
    except BatchMemoryError:
        return False


def test_rejects_bad_requests_in_one_line(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="batch_size"):
        list(stream_batch_generate(model, processor, "hi", [None], batch_size=0))
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        list(stream_batch_generate(model, processor, ["hi", "ho"], [None]))
    with pytest.raises(ValueError, match="max_tokens must be at least 1, got 0 for prompt 1"):
        list(stream_batch_generate(model, processor, "hi", [None, None], max_tokens=[2, 0]))


def test_available_memory_counts_what_the_kernel_can_drop():
    """On Linux the one memory rule reads MemAvailable (page cache included, where a
    checkpoint just read lies), not the free pages alone; it is positive everywhere."""
    from mlx_vlm_port.memory import available_memory

    got = available_memory()
    assert got > 0
    if not os.path.exists("/proc/meminfo") or "max_recommended_working_set_size" in mx.device_info():
        return
    with open("/proc/meminfo") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    assert abs(got - fields["MemAvailable"]) < 256 << 20
