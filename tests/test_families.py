"""Both model families through the same user-facing paths: load(), generate, the
Captioner's detail presets and `python -m app.caption --model ...`."""

import json

import pytest

from captioning.captioner import Captioner
from captioning.job import DETAILS, Job
from mlx_vlm_port.options import SamplingOptions
from mlx_vlm_port import generate, load
from mlx_vlm_port.load import ModelLoadError
from mlx_vlm_port.processor import UnsupportedOption
from tests.images import synthetic_image
from tests.test_cli import FAST, cli, records
from tests.tiny_idefics3 import make_tiny_idefics3_checkpoint


@pytest.fixture(scope="module")
def smol_path(tmp_path_factory):
    return make_tiny_idefics3_checkpoint(tmp_path_factory.mktemp("smol") / "smolvlm")


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("pictures") / "photo.jpg"
    synthetic_image(640, 480, 4).save(path, quality=90)
    return path


def test_each_family_loads_and_generates(tiny_path, smol_path, picture):
    for path, kind in ((tiny_path, "lfm2_vl"), (smol_path, "idefics3")):
        model, processor = load(path)
        assert model.config.model_type == kind
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}])
        text = generate(model, processor, prompt, [picture], max_tokens=3, temperature=0)
        assert isinstance(text, str)


def test_image_options_of_the_other_family_are_refused(tiny_path, smol_path):
    _, smol = load(smol_path)
    with pytest.raises(UnsupportedOption, match="max_image_tokens does not apply to Idefics3"):
        smol("<image>", [synthetic_image(64, 64, 1)], max_image_tokens=64)
    _, lfm = load(tiny_path)
    with pytest.raises(UnsupportedOption, match="longest_edge does not apply to LFM2-VL"):
        lfm("<image>", [synthetic_image(64, 64, 1)], longest_edge=512)


# Image tokens of the 640×480 `picture` under each preset. LFM2-VL: Fast caps one view at
# 64 tokens (6×9 after the 32-pixel rounding), Balanced/Detailed at 256 (13×18; the image
# is too small to tile). The tiny SmolVLM has 64-pixel views of 16 tokens: Fast is one
# view; Balanced's 1024-pixel edge gives 12×16 tiles + the global view (sized for the real
# 512-pixel tiles); Detailed uses the checkpoint's own edge (3×4 tiles + the global view).
PRESET_IMAGE_TOKENS = {"lfm2_vl": {"Fast": 54, "Balanced": 234, "Detailed": 234},
                       "idefics3": {"Fast": 16, "Balanced": 3088, "Detailed": 208}}


@pytest.mark.parametrize("detail", list(DETAILS))
def test_detail_presets_resolve_for_the_loaded_family(tiny_path, smol_path, picture, detail):
    for path in (tiny_path, smol_path):
        captioner = Captioner(str(path))
        job = Job(sampling=SamplingOptions(max_tokens=1, temperature=0), detail=detail)
        last = list(captioner.stream(picture, job))[-1]
        options = DETAILS[detail][captioner.family]
        ids = captioner.processor(captioner.prompt(job.prompt), [picture], return_numpy=True,
                                  **options.given())["input_ids"][0]
        assert last.prompt_tokens == len(ids)  # the preset's options reached the processor
        image_tokens = int((ids == captioner.processor.image_token_id).sum())
        assert image_tokens == PRESET_IMAGE_TOKENS[captioner.family][detail]


def test_unsupported_model_type_is_named(tmp_path, smol_path):
    import shutil

    folder = tmp_path / "smolvlm2"
    shutil.copytree(smol_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "smolvlm"}))
    with pytest.raises(ModelLoadError, match="model_type 'smolvlm' is not supported.*idefics3"):
        load(folder)


def test_cli_runs_either_family_and_refuses_the_other_familys_flag(tiny_path, smol_path, picture):
    for path in (tiny_path, smol_path):
        done = cli(picture, "--model", path, "--json", "--detail", "fast", *FAST)
        assert done.returncode == 0, done.stderr
        assert records(done.stdout)[0]["model"] == str(path)
    refused = cli(picture, "--model", smol_path, "--max-image-tokens", "64", *FAST)
    assert refused.returncode == 2
    assert b"max_image_tokens does not apply to Idefics3 (SmolVLM) checkpoints" in refused.stderr
    refused = cli(picture, "--model", tiny_path, "--longest-edge", "512", *FAST)
    assert refused.returncode == 2 and b"longest_edge does not apply to LFM2-VL" in refused.stderr
    done = cli(picture, "--model", smol_path, "--longest-edge", "128", *FAST)
    assert done.returncode == 0, done.stderr


def test_smolvlm_folder_without_image_seq_len_takes_the_model_geometry(tmp_path, smol_path):
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(smol_path, folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Idefics3Processor"}))
    _, processor = load(folder)
    assert processor.image_processor.config.image_seq_len == 16  # (64 / 8)² / 2²


def test_cli_max_image_tokens_caps_the_image_while_the_library_keeps_the_reference_rule(tiny_path, tmp_path):
    """400×300 at 16 tokens: the reference processor's budget is per view, and an image
    larger than it is cut into 512² tiles (256 tokens each) plus a thumbnail; the CLI's
    --max-image-tokens means "at most N tokens", so it asks for one view."""
    image = tmp_path / "small.png"
    synthetic_image(400, 300, 5).save(image)
    captioner = Captioner(str(tiny_path)).load()
    prompt = captioner.prompt("Describe this image.")
    count = lambda **options: int((captioner.processor(prompt, [image], return_numpy=True, **options)  # noqa: E731
                                   ["input_ids"][0] == captioner.processor.image_token_id).sum())
    assert count(max_image_tokens=16) > 1000  # the library: tiles
    one_view = count(max_image_tokens=16, do_image_splitting=False)
    assert one_view <= 16
    done = cli(image, "--model", tiny_path, "--json", "--max-image-tokens", "16", *FAST)
    assert done.returncode == 0, done.stderr
    ids = captioner.processor(prompt, [image], return_numpy=True, max_image_tokens=16,
                              do_image_splitting=False)["input_ids"]
    assert records(done.stdout)[0]["prompt_tokens"] == ids.shape[1]
