"""Photo metadata written by captioning/metadata.py + safe_write.py, judged by ExifTool.

The photos are made here and given camera EXIF, GPS, an ICC profile and a user's
own XMP/IPTC keywords by ExifTool itself; after our write ExifTool reads every
field back, and every tag that is not ours must read the same as before. Known
structured answers are fed in directly (a tiny random model writes nonsense).
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from captioning import metadata, safe_write
from captioning.errors import Exit, Failure
from tests.images import synthetic_image

pytest.importorskip("pyexiv2")
ROOT = Path(__file__).resolve().parents[1]
EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="needs exiftool (libimage-exiftool-perl; .ci/run installs it)")

FIELDS = metadata.Fields(description="A red tram crosses a bridge over the river at dusk; café lights glow.",
                         alt_text="Red tram on a river bridge at dusk", title="Tram at dusk",
                         keywords=["tram", "bridge", "river", "dusk", "Paris", "city"])
# Tags we write (ExifTool names), and tags that name the writer or are derived from the file.
OURS = {"XMP-dc:Description", "XMP-dc:Subject", "XMP-iptcCore:AltTextAccessibility", "XMP-photoshop:Headline",
        "IPTC:Caption-Abstract", "IPTC:Keywords", "IPTC:Headline", "IPTC:CodedCharacterSet",
        "IFD0:ImageDescription"}
# (ExifTool's digest of the IIM block, and where TIFF's image strips sit in the file.)
BOOKKEEPING = {"XMP-x:XMPToolkit", "SourceFile", "File:CurrentIPTCDigest", "IFD0:StripOffsets"}
FORMATS = ["jpg", "png", "tif", "webp"]


def exiftool(path) -> dict:
    return exiftool_all([path])[0]


def exiftool_all(paths) -> list[dict]:
    done = subprocess.run([EXIFTOOL, "-j", "-G1", "-a", "-s", *map(str, paths)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def others(tags: dict) -> dict:
    return {k: v for k, v in tags.items() if k not in OURS | BOOKKEEPING
            and k.split(":")[0] not in ("System", "ExifTool", "Composite")
            and k not in ("File:FileSize", "File:ExifByteOrder")}


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def jpeg_image_data(data: bytes) -> bytes:
    """The bytes from the first start-of-scan marker to the end: the compressed image."""
    i = 2
    while data[i] == 0xFF and data[i + 1] != 0xDA:
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    assert data[i:i + 2] == b"\xff\xda"
    return data[i:]


def make_photo(path: Path) -> Path:
    """A photo as a camera and a user left it: EXIF (make, date, orientation), GPS, an
    ICC profile, the user's own XMP keywords and creator, IIM keywords (JPEG/TIFF)."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = synthetic_image(96, 64, 5)
    extra = {"quality": 90} if path.suffix == ".jpg" else {"lossless": True} if path.suffix == ".webp" else {}
    image.save(path, icc_profile=icc, **extra)
    tags = ["-Make=Canon", "-Model=EOS 5D", "-Orientation#=6", "-DateTimeOriginal=2020:01:02 03:04:05",
            "-GPSLatitude=48.85", "-GPSLatitudeRef=N", "-GPSLongitude=2.35", "-GPSLongitudeRef=E",
            "-XMP-dc:Subject=family", "-XMP-dc:Subject=Paris", "-XMP-dc:Creator=Ann"]
    if path.suffix in (".jpg", ".tif"):
        tags += ["-IPTC:Keywords=family", "-IPTC:By-line=Ann"]
    subprocess.run([EXIFTOOL, "-q", "-q", "-overwrite_original", *tags, str(path)], check=True)
    return path


def write(path: Path, fields: metadata.Fields = FIELDS, touch: bool = False, sidecar: Path | None = None) -> None:
    target = str(sidecar or path)
    before = safe_write.check_target(target, target, must_exist=sidecar is None)
    data = safe_write.read_unchanged(target, target, before)
    new = metadata.update(data or metadata.EMPTY_SIDECAR, fields, target, sidecar=sidecar is not None)
    safe_write.replace(target, new, target, before, touch=touch)


# --- the structured answer -------------------------------------------------------------------

def test_parse_answer_takes_fenced_json_with_prose_around_it():
    text = ('Sure! ```json\n{"title": "Tram at dusk", "alt_text": "Red tram", "description": "A red tram.", '
            '"keywords": ["tram", "Tram", " bridge ", ""]}\n``` Hope this helps.')
    f = metadata.parse_answer(text)
    assert (f.title, f.alt_text, f.description, f.keywords) == ("Tram at dusk", "Red tram", "A red tram.",
                                                                ["tram", "bridge"])


def test_parse_answer_applies_the_limits():
    words = " ".join(f"w{i}" for i in range(30))
    f = metadata.parse_answer(json.dumps({"title": words, "alt_text": "x " * 200, "description": "d",
                                          "keywords": [f"k{i}" for i in range(40)]}))
    assert len(f.title.split()) == metadata.TITLE_WORDS
    assert len(f.alt_text) <= metadata.ALT_CHARS and f.alt_text.endswith("…")
    assert f.keywords == [f"k{i}" for i in range(metadata.MAX_KEYWORDS)]


def test_parse_answer_falls_back_to_the_plain_caption():
    long = "A dog runs on a beach " * 10
    f = metadata.parse_answer(long)
    assert f.description == long.strip() and f.title == "" and f.keywords == []
    assert f.alt_text == metadata.shorten(long, metadata.ALT_CHARS) and len(f.alt_text) <= 125
    cut = metadata.parse_answer('{"title": "Dog", "description": "A dog on a beach.", "keywords": ["dog", "be')
    assert (cut.description, cut.alt_text, cut.title) == ("A dog on a beach.", "A dog on a beach.", "Dog")
    assert metadata.parse_answer('{"keywords": "dog, beach, sand", "alt_text": "Dog"}').keywords == \
        ["dog", "beach", "sand"]


def test_parse_answer_refuses_an_empty_answer_and_drops_control_characters():
    with pytest.raises(ValueError):
        metadata.parse_answer("  \n ")
    with pytest.raises(ValueError):
        metadata.parse_answer('{"title": "x", "description": ""}')
    assert metadata.parse_answer("a\x10b\x00c").description == "a b c"


# --- embedding, read back by ExifTool ------------------------------------------------------

@pytest.mark.parametrize("ext", FORMATS)
def test_embed_writes_every_field_and_changes_nothing_else(tmp_path, ext):
    path = make_photo(tmp_path / f"photo.{ext}")
    before_tags, before_pixels, before_bytes = exiftool(path), pixels(path), path.read_bytes()
    write(path)
    after = exiftool(path)
    assert after["XMP-dc:Description"] == FIELDS.description
    assert after["XMP-iptcCore:AltTextAccessibility"] == FIELDS.alt_text
    assert after["XMP-photoshop:Headline"] == FIELDS.title
    # The user's keywords stay first; ours are added, "Paris" not twice.
    assert after["XMP-dc:Subject"] == ["family", "Paris", "tram", "bridge", "river", "dusk", "city"]
    if ext in ("jpg", "tif"):  # the mirrors, where the format has them natively
        assert after["IFD0:ImageDescription"] == FIELDS.description
        assert after["IPTC:Caption-Abstract"] == FIELDS.description
        assert after["IPTC:Headline"] == FIELDS.title
        assert after["IPTC:CodedCharacterSet"] == "UTF8"
        assert after["IPTC:Keywords"] == ["family", "tram", "bridge", "river", "dusk", "Paris", "city"]
    if ext in ("jpg", "tif"):  # (PNG and WebP: exiv2 re-encodes EXIF in its own byte order, values the same)
        assert after["File:ExifByteOrder"] == before_tags["File:ExifByteOrder"]
    assert others(after) == others(before_tags)
    for tag in ("IFD0:Make", "IFD0:Orientation", "ExifIFD:DateTimeOriginal", "GPS:GPSLatitude",
                "ICC_Profile:ProfileDescription", "XMP-dc:Creator"):
        assert after[tag] == before_tags[tag], tag
    assert np.array_equal(pixels(path), before_pixels)
    if ext == "jpg":
        assert jpeg_image_data(path.read_bytes()) == jpeg_image_data(before_bytes)


def test_rewriting_is_idempotent_for_keywords(tmp_path):
    path = make_photo(tmp_path / "photo.jpg")
    write(path)
    first = exiftool(path)
    write(path)
    assert exiftool(path)["XMP-dc:Subject"] == first["XMP-dc:Subject"]
    assert exiftool(path)["IPTC:Keywords"] == first["IPTC:Keywords"]


def test_other_languages_of_a_description_are_kept(tmp_path):
    path = make_photo(tmp_path / "photo.jpg")
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP-dc:Description-de=Eine Straßenbahn",
                    "-XMP-dc:Description=old", str(path)], check=True)
    write(path)
    after = exiftool(path)
    assert after["XMP-dc:Description"] == FIELDS.description
    assert after["XMP-dc:Description-de"] == "Eine Straßenbahn"


def test_heic_cannot_be_embedded_but_gets_a_sidecar(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "IMG_0001.heic"
    synthetic_image(64, 48, 1).save(path, quality=-1)
    before = path.read_bytes()
    with pytest.raises(metadata.Unsupported, match="sidecar"):
        write(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["IMG_0001.heic"]  # no temp file left
    sidecar = Path(metadata.sidecar_path(str(path), "adobe"))
    write(path, sidecar=sidecar)
    assert sidecar.name == "IMG_0001.xmp"
    tags = exiftool(sidecar)
    assert tags["XMP-dc:Description"] == FIELDS.description and "IPTC:Caption-Abstract" not in tags
    assert path.read_bytes() == before


# --- sidecars -------------------------------------------------------------------------------

def test_sidecar_names():
    assert metadata.sidecar_path("/p/IMG_0001.JPG", "adobe") == "/p/IMG_0001.xmp"
    assert metadata.sidecar_path("/p/IMG_0001.JPG", "darktable") == "/p/IMG_0001.JPG.xmp"


def test_an_existing_sidecar_is_updated_not_replaced(tmp_path):
    photo = make_photo(tmp_path / "IMG_0001.JPG")
    sidecar = tmp_path / "IMG_0001.JPG.xmp"
    subprocess.run([EXIFTOOL, "-q", "-XMP-dc:Creator=Ann", "-XMP-dc:Subject=holiday", "-XMP-xmp:Rating=4",
                    "-XMP-dc:Description=old caption", str(sidecar)], check=True)  # a new XMP file
    before = exiftool(sidecar)
    photo_bytes = photo.read_bytes()
    write(photo, sidecar=sidecar)
    after = exiftool(sidecar)
    assert after["XMP-dc:Description"] == FIELDS.description
    assert after["XMP-dc:Subject"][0] == "holiday" and "tram" in after["XMP-dc:Subject"]
    assert others(after) == others(before)
    assert after["XMP-xmp:Rating"] == 4 and after["XMP-dc:Creator"] == "Ann"
    assert photo.read_bytes() == photo_bytes


# --- what the file keeps, and what is refused ---------------------------------------------------

def test_permissions_times_and_xattrs_survive(tmp_path):
    path = make_photo(tmp_path / "photo.jpg")
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_000_000_000_123_456_789, 1_000_000_000_987_654_321))
    try:
        os.setxattr(path, "user.xdg.tags", b"red,holiday")
    except OSError as e:
        pytest.skip(f"no user xattrs on this file system ({e.strerror})")
    write(path)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123_456_789, 1_000_000_000_987_654_321)
    assert os.getxattr(path, "user.xdg.tags") == b"red,holiday"
    write(path, touch=True)
    assert abs(os.stat(path).st_mtime - time.time()) < 3600


@pytest.mark.skipif(sys.platform != "darwin", reason="macOS only: Finder tags are extended attributes there")
def test_finder_tags_survive_on_macos(tmp_path):
    path = make_photo(tmp_path / "photo.jpg")
    tag = "com.apple.metadata:_kMDItemUserTags"
    subprocess.run(["xattr", "-wx", tag, "62706c6973743030a1015352656408000000000000010100000000000000"
                    "020000000000000000000000000000000c", str(path)], check=True)
    write(path)
    assert subprocess.run(["xattr", "-p", tag, str(path)], capture_output=True).returncode == 0


def refused(path, match: str, sidecar=None):
    with pytest.raises(Failure) as e:
        write(path, sidecar=sidecar)
    assert e.value.code == Exit.IMAGE and "\n" not in e.value.message
    assert match in e.value.message, e.value.message


def test_read_only_file_is_refused(tmp_path):
    path = make_photo(tmp_path / "photo.jpg")
    os.chmod(path, 0o444)
    refused(path, "read-only")


def test_symlink_and_hard_link_are_refused(tmp_path):
    path = make_photo(tmp_path / "photo.jpg")
    before = path.read_bytes()
    (tmp_path / "link.jpg").symlink_to(path)
    refused(tmp_path / "link.jpg", "symbolic link")
    os.link(path, tmp_path / "twin.jpg")
    refused(path, "hard links")
    assert path.read_bytes() == before and (tmp_path / "link.jpg").is_symlink()


def test_unsupported_formats_are_refused(tmp_path):
    gif = tmp_path / "anim.gif"
    synthetic_image(32, 32, 1).save(gif)
    with pytest.raises(metadata.Unsupported, match="anim.gif"):
        write(gif)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(metadata.Unsupported, match="notes.jpg"):
        write(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif", "notes.jpg"]


def test_a_file_changed_while_we_worked_is_left_alone(tmp_path):
    path = make_photo(tmp_path / "photo.jpg")
    before = safe_write.check_target(str(path), "photo.jpg", must_exist=True)
    new = metadata.update(safe_write.read_unchanged(str(path), "photo.jpg", before), FIELDS, "photo.jpg")
    with open(path, "ab") as f:  # someone else appends (e.g. a sync tool)
        f.write(b"\0")
    theirs = path.read_bytes()
    with pytest.raises(Failure, match="changed by something else") as e:
        safe_write.replace(str(path), new, "photo.jpg", before)
    assert e.value.code == Exit.IMAGE
    assert path.read_bytes() == theirs
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg"]
    with pytest.raises(Failure, match="changed by something else"):
        safe_write.read_unchanged(str(path), "photo.jpg", before)


def test_a_full_disk_leaves_the_original_and_no_temp_file(tmp_path):
    """A file size limit makes the write fail part-way (EFBIG), as a full disk does (ENOSPC)."""
    path = make_photo(tmp_path / "photo.jpg")
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from tests.test_metadata import write
        from captioning.errors import Failure
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        try:
            write(__import__("pathlib").Path({str(path)!r}))
        except Failure as e:
            print(e.code, e.message)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("3 ") and "disk is full" in done.stdout, done.stdout + done.stderr
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg"]


# --- killed mid-write ---------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from captioning.metadata import Fields
from tests.test_metadata import write
paths = sorted(Path({folder!r}).glob("*.*"))
print("writing", flush=True)
for round in range(1000000):
    for path in paths:
        write(path, Fields(description=f"round {{round}}", alt_text="alt", keywords=[f"k{{round}}"]))
"""


def test_killed_at_any_moment_leaves_old_or_new_files(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    originals = {}
    for i, ext in enumerate(FORMATS * 2):
        path = make_photo(folder / f"p{i}.{ext}")
        originals[path.name] = (pixels(path), others(exiftool(path)))
    rng = np.random.default_rng(0)
    for kill in range(10):
        child = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), folder=str(folder))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout.readline() == b"writing\n", child.stderr.read()
        time.sleep(float(rng.uniform(0.0, 0.4)))  # where it dies varies; any moment must be safe
        child.send_signal(signal.SIGKILL)
        child.wait()
        for (name, (px, tags)), read in zip(originals.items(), exiftool_all(folder / n for n in originals)):
            path = folder / name
            assert "ExifTool:Error" not in read and "ExifTool:Warning" not in read, (name, read)
            assert np.array_equal(pixels(path), px), name
            assert others(read) == tags, name
            description = read.get("XMP-dc:Description", "")
            assert description.startswith("round ") or kill == 0 and not description, (name, description)
    left = [p.name for p in folder.iterdir() if p.name not in originals]
    assert all(safe_write.TEMP_RE.match(n) for n in left), left  # only our hidden temp files
    from app.batch import expand

    assert sorted(Path(s.path).name for s in expand([str(folder)])) == sorted(originals)
    assert sorted(Path(p).name for p in safe_write.remove_stale(str(folder))) == sorted(left)
    assert sorted(p.name for p in folder.iterdir()) == sorted(originals)
