"""Image decoding and processor rules beyond the golden files."""

import io

import numpy as np
import pytest
from PIL import Image

from mlx_vlm_port.image import ImageError, load_image, resize_uint8
from mlx_vlm_port.processing_lfm2_vl import ImageConfig, grid_layout, smart_resize
from tests.images import synthetic_image

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]


def png_bytes(image, **params):
    buf = io.BytesIO()
    image.save(buf, format="PNG", **params)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    image = synthetic_image(64, 32, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes())
    loaded = load_image(buf.getvalue())
    assert loaded.size == (32, 64)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_mode_becomes_rgb(mode):
    base = synthetic_image(40, 30, seed=2)
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(base.convert("L")).astype(np.uint16) * 257)
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_sixteen_bit_grayscale_keeps_its_range():
    a = np.full((8, 8), 65535, np.uint16)
    assert Image.fromarray(a).mode.startswith("I;16")
    assert np.asarray(load_image(Image.fromarray(a))).min() == 255


def test_transparency_composites_onto_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(rgba)).min() == 255


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(buf.getvalue()))[0, 0, 0] > 200


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"not an image at all", "not a readable image"),
    (png_bytes(Image.new("RGB", (32, 32)))[:60], "not a readable image"),
])
def test_bad_bytes_raise_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("side", [15000, 30000])  # between and beyond PIL's two limits
def test_decompression_bomb_is_refused_without_allocating(side):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    with pytest.raises(ImageError, match="too large"):
        load_image(header + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def test_resize_identity_and_constant():
    a = np.full((13, 7, 3), 77, np.uint8)
    assert (resize_uint8(a, 13, 7) == a).all()
    assert (resize_uint8(a, 40, 3) == 77).all()


def test_smart_resize_respects_token_bounds():
    c = ImageConfig()
    for h, w in [(1, 1), (10, 5000), (5000, 10), (480, 640), (3000, 4000)]:
        rh, rw = smart_resize(h, w, c, 32, 256)
        assert rh % 32 == 0 and rw % 32 == 0
        assert (rh // 32) * (rw // 32) <= 256 or min(rh, rw) == 32


def test_grid_prefers_the_image_aspect():
    assert grid_layout(1080, 1920, 2, 10, 512) == (2, 4)  # 2:1 and 4:2 tie; the image covers > half of 4:2
    rows, cols = grid_layout(3000, 1000, 2, 10, 512)
    assert rows > cols


def test_prompt_image_count_must_match(tiny):
    _, processor = tiny
    prompt = processor.apply_chat_template(MESSAGES)
    with pytest.raises(ValueError, match="1 <image> tokens but 2 images"):
        processor(prompt, [synthetic_image(8, 8, 1), synthetic_image(8, 8, 2)])


def test_one_image_may_be_given_alone_in_any_form(tiny, tmp_path):
    _, processor = tiny
    prompt = processor.apply_chat_template(MESSAGES)
    image = synthetic_image(70, 50, seed=5)
    path = tmp_path / "one.png"
    path.write_bytes(png_bytes(image))
    want = processor(prompt, [image], return_numpy=True)
    for alone in (image, str(path), path, path.read_bytes(), np.asarray(image), io.BytesIO(path.read_bytes())):
        got = processor(prompt, alone, return_numpy=True)  # a path string is one image, not its characters
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("array", [np.zeros((9, 7, 2), np.uint8), np.zeros((9, 7, 3), np.float32),
                                   np.zeros((2, 9, 7, 3), np.uint8), np.zeros((0, 7, 3), np.uint8)])
def test_numpy_images_of_other_shapes_or_types_are_refused(array):
    with pytest.raises(ImageError, match="uint8 of shape"):
        load_image(array)


def test_numpy_gray_and_rgba_images_load_as_pil_would():
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(rgba)), np.asarray(load_image(Image.fromarray(rgba))))
    gray = rgba[..., :1]
    assert np.array_equal(np.asarray(load_image(gray)), np.asarray(load_image(Image.fromarray(gray[..., 0]))))


def test_an_empty_prompt_is_refused_by_name(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="prompt is empty"):
        processor("")


def test_no_split_gives_one_view_and_fewer_tokens(tiny):
    _, processor = tiny
    prompt = processor.apply_chat_template(MESSAGES)
    image = synthetic_image(1920, 1080, seed=4)
    tiled = processor(prompt, [image], return_numpy=True)
    single = processor(prompt, [image], do_image_splitting=False, return_numpy=True)
    assert tiled["pixel_values"].shape[0] > 1 and single["pixel_values"].shape[0] == 1
    assert single["input_ids"].shape[1] < tiled["input_ids"].shape[1]
    few = processor(prompt, [image], do_image_splitting=False, max_image_tokens=64, return_numpy=True)
    assert (few["input_ids"] == processor.image_token_id).sum() <= 64


def test_streaming_detokenizer_handles_split_characters(tiny):
    from mlx_vlm_port.processor import StreamingDetokenizer

    _, processor = tiny
    text = "héllo wörld — ça va? " * 10
    ids = processor.tokenizer.encode(text, add_special_tokens=False).ids
    detok = StreamingDetokenizer(processor)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) == processor.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("floor", [64, 32])
@pytest.mark.parametrize("size", [(300, 400), (20, 30), (1, 700), (700, 1)])
def test_a_view_is_never_grown_past_its_token_budget(size, floor):
    """The processor grows a small view to the checkpoint's floor (LFM2.5-VL: 64 tokens,
    LFM2-VL: 32), rounding each side up. Under a budget at or below that floor (the CLI's
    --max-image-tokens 32) the view is not grown, rather than built past its own budget."""
    from mlx_vlm_port.options import ImageOptions
    from mlx_vlm_port.processing_lfm2_vl import ImageConfig, ImageProcessor

    processor = ImageProcessor(ImageConfig(min_image_tokens=floor, max_image_tokens=256))
    image = np.zeros((*size, 3), np.uint8)
    _, arrays = processor.expand(image, ImageOptions(max_image_tokens=32, do_image_splitting=False))
    h, w = arrays["spatial_shapes"][0]
    assert (h // 2) * (w // 2) <= 32 and arrays["pixel_values"].shape[1] == 32 * 4
