"""HEIC/HEIF input (iPhone photos; Shortcuts' "Get Latest Photos" and "Select Photos" pass them):
real files written by pillow-heif's libheif encoder, read wherever images are read."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pillow_heif  # noqa: E402  (a dependency: a broken install fails here)
ROOT = Path(__file__).resolve().parents[1]


def heic_bytes(w: int = 64, h: int = 48) -> tuple[bytes, np.ndarray]:
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 4 % 256, y * 5 % 256, np.full_like(x, 200)], -1).astype(np.uint8)
    if not pillow_heif.libheif_info()["encoders"]:
        pytest.skip("this libheif build has no HEIF encoder")
    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(pixels)).save(buf, quality=95)
    data = buf.getvalue()
    assert data[4:12] == b"ftypheic"  # a real HEIC container, not a renamed PNG
    return data, pixels


def test_a_fresh_process_decodes_heic_from_bytes_path_and_file(tmp_path):
    data, pixels = heic_bytes()
    (tmp_path / "photo.heic").write_bytes(data)
    # A new interpreter, so nothing registered pillow-heif before load_image runs.
    script = f"""
import io, sys
import numpy as np
from mlx_vlm_port.image import load_image
from PIL import Image
path = {str(tmp_path / 'photo.heic')!r}
data = open(path, 'rb').read()
for source in (data, path, open(path, 'rb'), io.BytesIO(data)):
    im = load_image(source)
    assert im.mode == 'RGB' and im.size == (64, 48), (im.mode, im.size)
np.save({str(tmp_path / 'out.npy')!r}, np.asarray(im))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    decoded = np.load(tmp_path / "out.npy")
    assert np.abs(decoded.astype(int) - pixels).mean() < 6  # lossy HEVC, same picture


def test_the_menubar_request_reader_takes_heic(tmp_path):
    import base64

    from menubar.jobs import request_from_message

    data, _ = heic_bytes()
    request = request_from_message({"op": "caption", "id": "h", "image_b64": base64.b64encode(data).decode()})
    assert request.image.size == (64, 48)


def test_garbage_with_a_heic_header_is_still_a_bad_image():
    from mlx_vlm_port.image import ImageError, load_image

    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
