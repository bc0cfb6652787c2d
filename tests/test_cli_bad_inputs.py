"""A corpus of awkward and broken inputs, made here, each run through the real CLI.

Every case must end with the documented exit code; failures print exactly one
`caption: error: ...` line on stderr (never a traceback), and the awkward but
valid images (1×1, CMYK, 16-bit, animated, palette+alpha, EXIF-rotated, ...)
caption fine with nothing on stderr.
"""

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.images import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-tokens", "3", "--temperature", "0", "--no-service"]


def png_bytes(width: int, height: int, depth: int = 8, color: int = 2, rows: bytes = b"\0") -> bytes:
    """A PNG written by hand: only the header claims the size, so a 30000×30000
    "image" is a few dozen bytes and nothing large is ever allocated here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def make_corpus(folder: Path, tiny: Path) -> None:
    photo = synthetic_image(96, 64, 5)
    png, jpg = encoded(photo, "PNG"), encoded(photo, "JPEG", quality=90)
    files = {
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 2],
        "text.jpg": b"This is a text file wearing a .jpg name.\n",
        "empty.png": b"",
        "bomb.png": png_bytes(30000, 30000),  # 2.7 GB of RGB if anyone decoded it
        "big.png": png_bytes(15000, 15000),  # above our limit, below PIL's hard error
        "bad_crc.png": png[:29] + bytes([png[29] ^ 0xFF]) + png[30:],  # IHDR checksum broken
        "fake.heic": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64,
        "one_pixel.png": encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "cmyk.jpg": encoded(Image.new("CMYK", (80, 60), (0, 80, 160, 20)), "JPEG"),
        "gray16.png": encoded(Image.fromarray((np.arange(60 * 80).reshape(60, 80) * 13).astype(np.uint16)), "PNG"),
        "rgb16.png": png_bytes(4, 3, depth=16, color=2, rows=b"".join(b"\0" + bytes(range(24)) for _ in range(3))),
        "grayscale.jpg": encoded(photo.convert("L"), "JPEG"),
        "thin.png": encoded(Image.new("RGB", (2, 3000), (0, 0, 255)), "PNG"),
    }
    frames = [synthetic_image(48, 48, s) for s in range(3)]
    files["animated.gif"] = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    palette = synthetic_image(64, 48, 6, mode="P")
    files["palette_alpha.png"] = encoded(palette, "PNG", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    files["rotated.jpg"] = encoded(synthetic_image(80, 40, 7), "JPEG", exif=exif)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "no_images").mkdir()
    (folder / "no_images" / "readme.txt").write_text("nothing to see")

    for name, damage in {"corrupt_weights": "weights", "corrupt_config": "config", "wrong_shapes": "shapes"}.items():
        broken = shutil.copytree(tiny, folder / name)
        if damage == "weights":
            data = (broken / "model.safetensors").read_bytes()
            (broken / "model.safetensors").write_bytes(data[:200])
        elif damage == "config":
            (broken / "config.json").write_text('{"model_type": "lfm2_vl", ')
        else:
            text = (broken / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 96')
            (broken / "config.json").write_text(text)


# id: (arguments, stdin, expected exit code, extra environment). {d} = corpus folder, {m} = tiny model.
CASES = {
    "truncated PNG": (["{d}/truncated.png"], b"", 3, {}),
    "truncated JPEG": (["{d}/truncated.jpg"], b"", 3, {}),
    "text file named .jpg": (["{d}/text.jpg"], b"", 3, {}),
    "0-byte file": (["{d}/empty.png"], b"", 3, {}),
    "30000x30000 PNG header": (["{d}/bomb.png"], b"", 3, {}),
    "15000x15000 PNG header": (["{d}/big.png"], b"", 3, {}),
    "PNG with a broken checksum": (["{d}/bad_crc.png"], b"", 3, {}),
    "HEIC without a decoder": (["{d}/fake.heic"], b"", 3, {}),
    "missing file": (["{d}/nowhere.jpg"], b"", 3, {}),
    "folder with no images": (["{d}/no_images"], b"", 3, {}),
    "glob matching nothing": (["{d}/*.tiff"], b"", 3, {}),
    "garbage on stdin": (["-"], bytes(range(256)) * 8, 3, {}),
    "empty stdin": (["-"], b"", 3, {}),
    "bomb header on stdin": (["-"], png_bytes(30000, 30000), 3, {}),
    "unknown flag": (["{d}/one_pixel.png", "--frobnicate"], b"", 2, {}),
    "bad --max-tokens": (["{d}/one_pixel.png", "--max-tokens", "lots"], b"", 2, {}),
    "zero --max-tokens": (["{d}/one_pixel.png", "--max-tokens", "0"], b"", 2, {}),
    "negative --temperature": (["{d}/one_pixel.png", "--temperature", "-1"], b"", 2, {}),
    "NaN --temperature": (["{d}/one_pixel.png", "--temperature", "nan"], b"", 2, {}),
    "infinite --repetition-penalty": (["{d}/one_pixel.png", "--repetition-penalty", "inf"], b"", 2, {}),
    "negative --seed": (["{d}/one_pixel.png", "--seed", "-1"], b"", 2, {}),
    "--seed past 64 bits": (["{d}/one_pixel.png", "--seed", str(2**64)], b"", 2, {}),
    "--draw without --detect": (["{d}/one_pixel.png", "--draw", "{d}/out.png"], b"", 2, {}),
    "--draw with two images": (["{d}/one_pixel.png", "{d}/cmyk.jpg", "--detect", "x", "--draw", "{d}/o.png"],
                               b"", 2, {}),
    "--screen and --region": (["--screen", "--region"], b"", 2, {}),
    "missing model folder": (["{d}/one_pixel.png", "--model", "{d}/no_such_model"], b"", 4, {}),
    "corrupt model weights": (["{d}/one_pixel.png", "--model", "{d}/corrupt_weights"], b"", 4, {}),
    "corrupt model config": (["{d}/one_pixel.png", "--model", "{d}/corrupt_config"], b"", 4, {}),
    "weights that do not fit the config": (["{d}/one_pixel.png", "--model", "{d}/wrong_shapes"], b"", 4, {}),
    "hub model offline and not cached": (["{d}/one_pixel.png", "--model", "nobody/no-such-model"], b"", 4,
                                         {"HF_HUB_OFFLINE": "1", "HF_HOME": "{d}/hf"}),
    "clipboard with no display": (["--clipboard"], b"", 5, {"DISPLAY": "", "WAYLAND_DISPLAY": ""}),
    "screen with no display": (["--screen"], b"", 5, {"DISPLAY": "", "WAYLAND_DISPLAY": ""}),
    # awkward but valid
    "1x1 image": (["{d}/one_pixel.png"], b"", 0, {}),
    "CMYK JPEG": (["{d}/cmyk.jpg"], b"", 0, {}),
    "16-bit grayscale PNG": (["{d}/gray16.png"], b"", 0, {}),
    "16-bit RGB PNG": (["{d}/rgb16.png"], b"", 0, {}),
    "grayscale JPEG": (["{d}/grayscale.jpg"], b"", 0, {}),
    "2x3000 image": (["{d}/thin.png"], b"", 0, {}),
    "animated GIF": (["{d}/animated.gif"], b"", 0, {}),
    "palette PNG with transparency": (["{d}/palette_alpha.png"], b"", 0, {}),
    "EXIF-rotated JPEG": (["{d}/rotated.jpg"], b"", 0, {}),
}
LINUX_ONLY = {"clipboard with no display", "screen with no display"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_path) -> Path:
    folder = tmp_path_factory.mktemp("bad_inputs")
    make_corpus(folder, tiny_path)
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, corpus, tiny_path):
    if case in LINUX_ONLY and not sys.platform.startswith("linux"):
        pytest.skip("checks the X11/Wayland path")
    args, stdin, expected, env = CASES[case]
    fill = lambda s: s.replace("{d}", str(corpus))  # noqa: E731
    argv = [fill(a) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(tiny_path)]
    environ = {k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}
    environ.update({k: fill(v) for k, v in env.items()})
    done = subprocess.run([sys.executable, "-m", "app.caption", *argv, *FAST], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=120, env=environ)
    err = done.stderr.decode()
    assert done.returncode == expected, err
    assert "Traceback" not in err
    if expected == 0:
        assert err == "" and done.stdout.endswith(b"\n")
    else:
        assert len(err.splitlines()) == 1 and err.endswith("\n"), err
        assert err.startswith("caption: error: ") and done.stdout == b""


def test_corpus_is_big_enough():
    assert sum(code != 0 for _, _, code, _ in CASES.values()) >= 20
