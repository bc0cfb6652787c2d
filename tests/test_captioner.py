"""The captioning core on a real (tiny) model: follow-up questions reuse the image's
work through the Captioner's own prompt cache, and a Job survives the wire."""

import pytest

from captioning import protocol
from captioning.captioner import Captioner
from captioning.errors import Exit, Failure
from captioning.job import DETAILS, Job
from mlx_vlm_port.options import ImageOptions, SamplingOptions
from tests.images import synthetic_image


def test_a_follow_up_about_the_same_image_skips_the_vision_tower(tiny_path, monkeypatch):
    captioner = Captioner(str(tiny_path)).load()
    image = synthetic_image(400, 300, seed=9)
    greedy = SamplingOptions(max_tokens=4, temperature=0.0)
    captioner.run(image, Job("Describe this image.", sampling=greedy), lambda piece: None)
    calls = []
    tower = type(captioner.model.vision_tower).__call__
    monkeypatch.setattr(type(captioner.model.vision_tower), "__call__",
                        lambda self, *a, **k: calls.append(1) or tower(self, *a, **k))
    follow_up = captioner.run(image, Job("What colour is it?", sampling=greedy), lambda piece: None)
    assert calls == []  # the image's work came from the cache
    fresh = Captioner(str(tiny_path)).load().run(image, Job("What colour is it?", sampling=greedy),
                                                  lambda piece: None)
    assert calls == [1] and fresh.text == follow_up.text  # reuse changes nothing in the answer
    captioner.run(synthetic_image(400, 300, seed=10), Job("What colour is it?", sampling=greedy),
                  lambda piece: None)
    assert calls == [1, 1]  # another image: computed, and it replaces the first in the cache
    assert len(captioner.prompt_cache) == 1


def test_a_cancelled_job_stops_between_tokens(tiny_path):
    captioner = Captioner(str(tiny_path)).load()
    pieces = []
    with pytest.raises(Failure) as e:
        captioner.run(synthetic_image(64, 64, 1), Job(sampling=SamplingOptions(max_tokens=50, temperature=0)),
                      pieces.append, cancelled=lambda: len(pieces) >= 2)
    assert (e.value.code, e.value.message) == (Exit.MODEL, "cancelled") and len(pieces) == 2


def test_an_option_of_the_other_family_is_a_usage_failure(tiny_path):
    captioner = Captioner(str(tiny_path))
    with pytest.raises(Failure) as e:
        captioner.run(synthetic_image(64, 64, 1), Job(image=ImageOptions(longest_edge=512)), lambda piece: None)
    assert e.value.code == Exit.USAGE and "longest_edge does not apply to LFM2-VL" in e.value.message


def test_a_missing_model_is_a_model_failure_naming_it(tmp_path):
    with pytest.raises(Failure) as e:
        Captioner(str(tmp_path / "nowhere")).load()
    assert e.value.code == Exit.MODEL and str(tmp_path / "nowhere") in e.value.message


@pytest.mark.parametrize("job", [
    Job(),
    Job("What is it?", "Be brief.", SamplingOptions(max_tokens=9, temperature=0.0, top_p=0.5, seed=3),
        ImageOptions(max_image_tokens=64, do_image_splitting=False), "Fast"),
    Job(image=ImageOptions(longest_edge=1024, use_thumbnail=False, min_tiles=2, max_tiles=4), detail="Detailed"),
])
def test_a_job_survives_the_wire(job):
    assert protocol.job_from_request(protocol.decode(protocol.encode(protocol.job_fields(job)))) == job


def test_presets_name_only_options_their_family_takes():
    for preset in DETAILS.values():
        for family, options in preset.items():
            options.for_family(family)  # raises UnsupportedOption otherwise
