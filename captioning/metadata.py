"""Captions as photo metadata: what to write (title, alt text, description and
keywords from one structured answer) and how it lands in a file's XMP, with the
IPTC IIM and EXIF mirrors older readers look at.

Everything here works on bytes in memory through exiv2 (`pyexiv2`, the
`metadata` extra, imported lazily); putting the bytes on disk safely is
`safe_write.py`'s job. Existing metadata is read, merged (keywords) and written
back by exiv2, which leaves the image data itself untouched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import Exit, Failure
from .grounding import _loads_lenient, _strip_fences

INSTALL_HINT = 'pip install "mlx-vlm-port[metadata]"'
TITLE_WORDS, ALT_CHARS, MIN_KEYWORDS, MAX_KEYWORDS = 10, 125, 5, 15
IIM_CAPTION_BYTES, IIM_KEYWORD_BYTES, IIM_HEADLINE_BYTES = 2000, 64, 256
# The answer asked of the model; constrained decoding can hold it to this schema (every
# string and the list bounded, so a held answer always ends).
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 80, "description": f"a short title, at most {TITLE_WORDS} words"},
        "alt_text": {"type": "string", "maxLength": ALT_CHARS,
                     "description": "alt text for screen readers: what matters in the picture"},
        "description": {"type": "string", "maxLength": 1000, "description": "a caption of one to three sentences"},
        "keywords": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": MIN_KEYWORDS,
                     "maxItems": MAX_KEYWORDS},
    },
    "required": ["title", "alt_text", "description", "keywords"],
    "additionalProperties": False,
}
PROMPT = ("Describe this image for a photo library, in {language}. Answer with one JSON object: "
          '{{"title": a title of at most 10 words, "alt_text": alt text for screen readers, at most 125 '
          'characters, "description": one to three sentences, "keywords": 5 to 15 single-word or '
          "short keywords}}.")
X_DEFAULT = 'lang="x-default"'
IIM_UTF8 = "\x1b%G"  # IPTC 1:90 CodedCharacterSet: UTF-8
# exiv2 keys (the XMP prefix `iptc` is exiv2's name for Iptc4xmpCore).
DESCRIPTION, ALT_TEXT, KEYWORDS, HEADLINE = ("Xmp.dc.description", "Xmp.iptc.AltTextAccessibility",
                                             "Xmp.dc.subject", "Xmp.photoshop.Headline")
IIM_CAPTION, IIM_KEYWORDS, IIM_HEADLINE, IIM_CHARSET = ("Iptc.Application2.Caption", "Iptc.Application2.Keywords",
                                                        "Iptc.Application2.Headline", "Iptc.Envelope.CharacterSet")
EXIF_DESCRIPTION = "Exif.Image.ImageDescription"
MIRRORED = ("image/jpeg", "image/tiff")
# An empty XMP packet to start a new sidecar from (exiv2 fills it in).
EMPTY_SIDECAR = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
                 b'<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta><?xpacket end="w"?>')


def prompt(language: str = "English") -> str:
    return PROMPT.format(language=language)


@dataclass(frozen=True)
class Fields:
    """What is written into one photo."""

    description: str
    alt_text: str
    title: str = ""
    keywords: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"title": self.title, "alt_text": self.alt_text, "description": self.description,
                "keywords": list(self.keywords)}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text(value) -> str:
    """A string on one line without control characters (XML 1.0, hence XMP, cannot hold them)."""
    return " ".join(_CONTROL.sub(" ", value).split()) if isinstance(value, str) else ""


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a word boundary, with an ellipsis."""
    text = _text(text)
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,;:.-") + "…"


def clean_keywords(value) -> list[str]:
    """Keywords as a list of distinct, trimmed strings (a comma-separated string is split)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    out: list[str] = []
    for item in items:
        word = _text(item).strip(" .;#")
        if word and word.casefold() not in {w.casefold() for w in out} and len(word) <= 64:
            out.append(word)
    return out[:MAX_KEYWORDS]


def parse_answer(text: str) -> Fields:
    """The fields of a model's answer, leniently: code fences, prose around the
    object, a cut-off end and missing fields are all taken; without a description
    the plain answer is the caption. Limits are applied here. Raises ValueError
    when there is nothing to write."""
    body = _strip_fences(text)
    start = body.find("{")
    value = _loads_lenient(body[start:]) if start >= 0 else None
    data = value if isinstance(value, dict) else {}
    plain = _text(text) if not data else ""
    description = _text(data.get("description")) or _text(data.get("caption")) or plain or \
        _text(data.get("alt_text"))
    if not description:
        raise ValueError("the model's answer held no caption")
    title = " ".join(_text(data.get("title")).split()[:TITLE_WORDS]).strip(" .")
    alt = shorten(_text(data.get("alt_text")) or description, ALT_CHARS)
    return Fields(description=description, alt_text=alt, title=title,
                  keywords=clean_keywords(data.get("keywords", data.get("tags"))))


def require():
    """pyexiv2, or Failure(FAILED) naming the extra that installs it."""
    try:
        import pyexiv2
    except ImportError:
        raise Failure(Exit.FAILED, f"writing metadata needs pyexiv2: {INSTALL_HINT}") from None
    pyexiv2.set_log_level(4)  # exiv2's own warnings go to stderr unasked; errors still raise
    return pyexiv2


def _default(value) -> str:
    """The x-default text of a lang-alt value as pyexiv2 reads it."""
    if isinstance(value, dict):
        return value.get(X_DEFAULT) or next(iter(value.values()), "")
    return value if isinstance(value, str) else ""


def _as_list(value) -> list[str]:
    return value if isinstance(value, list) else [value] if isinstance(value, str) and value else []


def _merge(existing: list[str], ours: list[str]) -> list[str]:
    """The user's keywords first and untouched, then ours not already there."""
    seen = {k.casefold() for k in existing}
    return existing + [k for k in ours if k.casefold() not in seen]


def _cut_bytes(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


@dataclass
class Existing:
    """The fields of ours a file already carries."""

    description: str = ""
    alt_text: str = ""
    keywords: list[str] = field(default_factory=list)


class Unsupported(Exception):
    """exiv2 cannot read this file's metadata, or cannot write it in this format."""


def open_image(data: bytes, label: str):
    pyexiv2 = require()
    try:
        return pyexiv2.ImageData(data)
    except RuntimeError as e:  # exiv2's words: "unknown image type", "corrupted image metadata"
        raise Unsupported(f"{label}: exiv2 cannot read its metadata ({e})") from None


def check_writable(image, label: str) -> None:
    """Unsupported unless exiv2 can write XMP into this file's format."""
    if image.get_access_mode().get("xmp") != "read+write":
        kind = image.get_mime_type() or "this format"
        raise Unsupported(f"{label}: metadata cannot be written into {kind} files here (exiv2 "
                          f"{require().__exiv2_version__} cannot write them); use --write-metadata sidecar")


def existing(image) -> Existing:
    xmp = image.read_xmp()
    return Existing(description=_default(xmp.get(DESCRIPTION)), alt_text=_default(xmp.get(ALT_TEXT)),
                    keywords=_as_list(xmp.get(KEYWORDS)))


def _lang_alt(old, text: str) -> dict:
    """A lang-alt value with its x-default set to `text`, other languages kept."""
    value = dict(old) if isinstance(old, dict) else {}
    value[X_DEFAULT] = text
    return value


def update(data: bytes, fields: Fields, label: str, sidecar: bool = False) -> bytes:
    """`data` (an image, or an XMP sidecar) with our fields written: XMP always;
    in a JPEG or TIFF also IPTC IIM and EXIF."""
    image = open_image(data, label)
    try:
        check_writable(image, label)
        mode = image.get_access_mode()
        xmp = image.read_xmp()
        change = {DESCRIPTION: _lang_alt(xmp.get(DESCRIPTION), fields.description),
                  ALT_TEXT: _lang_alt(xmp.get(ALT_TEXT), fields.alt_text)}
        if fields.keywords:
            change[KEYWORDS] = _merge(_as_list(xmp.get(KEYWORDS)), fields.keywords)
        if fields.title:
            change[HEADLINE] = fields.title
        image.modify_xmp(change)
        # JPEG and TIFF carry IIM and EXIF natively and older readers look there; in
        # PNG and WebP, XMP is the place (and exiv2 would re-encode their EXIF block).
        if not sidecar and image.get_mime_type() in MIRRORED:
            if mode.get("iptc") == "read+write":
                _mirror_iptc(image, fields)
            if mode.get("exif") == "read+write":
                image.modify_exif({EXIF_DESCRIPTION: fields.description})
        return image.get_bytes()
    except RuntimeError as e:
        raise Unsupported(f"{label}: exiv2 cannot write its metadata ({e})") from None
    finally:
        image.close()


def _mirror_iptc(image, fields: Fields) -> None:
    """IIM's caption, headline and keywords, in UTF-8 (record 1:90). Skipped when the
    file's IIM is in another character set: adding 1:90 would change how the
    user's own IIM text is read."""
    try:
        iptc = image.read_iptc()
    except UnicodeDecodeError:
        return
    charset = iptc.get(IIM_CHARSET)
    if charset not in (None, IIM_UTF8) and any(not str(v).isascii() for v in iptc.values()):
        return
    keywords = [k for k in fields.keywords if len(k.encode("utf-8")) <= IIM_KEYWORD_BYTES]
    change = {IIM_CHARSET: IIM_UTF8, IIM_CAPTION: _cut_bytes(fields.description, IIM_CAPTION_BYTES)}
    if keywords:
        change[IIM_KEYWORDS] = _merge(_as_list(iptc.get(IIM_KEYWORDS)), keywords)
    if fields.title:
        change[IIM_HEADLINE] = _cut_bytes(fields.title, IIM_HEADLINE_BYTES)
    image.modify_iptc(change)


def sidecar_path(path: str, naming: str) -> str:
    """adobe: IMG_0001.xmp (Adobe's apps); darktable: IMG_0001.JPG.xmp (darktable, digiKam)."""
    return (os.path.splitext(path)[0] if naming == "adobe" else path) + ".xmp"


@dataclass
class Target:
    """Where one photo's metadata goes, as checked before it is captioned."""

    label: str  # the name errors use: the photo, or its sidecar
    path: str  # the file written: the photo itself, or its sidecar
    sidecar: bool
    before: os.stat_result | None  # the file as first seen (None: a sidecar still to be made)
    described: bool  # it already has a description or alt text


def prepare(path: str, label: str, sidecar_naming: str | None = None) -> Target:
    """Check, before any model time is spent, that `path`'s metadata (or its sidecar,
    named `sidecar_naming`) can be written; Failure(IMAGE) saying why not."""
    from . import safe_write

    target = sidecar_path(path, sidecar_naming) if sidecar_naming else path
    label = target if sidecar_naming else label
    before = safe_write.check_target(target, label, must_exist=not sidecar_naming)
    described = False
    if before is not None:
        try:
            with open(target, "rb") as f:
                image = open_image(f.read(), label)
            try:
                check_writable(image, label)
                have = existing(image)
            finally:
                image.close()
        except Unsupported as e:
            raise Failure(Exit.IMAGE, str(e)) from None
        except OSError as e:
            raise Failure(Exit.IMAGE, f"{label}: cannot read ({e.strerror or e})") from None
        described = bool(have.description or have.alt_text)
    return Target(label, target, bool(sidecar_naming), before, described)


def write(target: Target, answer: str, dry_run: bool = False, touch: bool = False) -> Fields:
    """Parse the model's answer and write it into `target` atomically (unless dry_run);
    Failure(IMAGE) when the answer is empty or the file cannot be written."""
    from . import safe_write

    try:
        fields = parse_answer(answer)
    except ValueError as e:
        raise Failure(Exit.IMAGE, f"{target.label}: {e}; nothing written") from None
    data = safe_write.read_unchanged(target.path, target.label, target.before)
    try:
        new = update(data or EMPTY_SIDECAR, fields, target.label, sidecar=target.sidecar)
    except Unsupported as e:
        raise Failure(Exit.IMAGE, str(e)) from None
    if not dry_run:
        safe_write.replace(target.path, new, target.label, target.before, touch=touch)
    return fields
