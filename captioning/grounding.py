"""Bounding boxes from a grounding answer, and drawing them on the image.

The model is asked for a JSON array of {"label", "bbox": [x1, y1, x2, y2]} (0..1),
the format LFM2-VL is trained on. Held to DETECT_SCHEMA, the answer is that JSON
and `boxes_from_json` reads it. Without the schema (or cut off by max_tokens) a
small VLM writes near-JSON: single quotes, trailing commas, a missing closing
bracket, prose or ``` fences around it, Python literals. `parse_boxes` repairs
what it can and, failing that, scans for label/box pairs, so a usable answer is
never lost to a syntax slip. Nothing here imports MLX.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

LABEL_KEYS = ("label", "name", "class", "category", "object", "text")
BOX_KEYS = ("bbox", "box", "bbox_2d", "box_2d", "bounding_box", "coordinates", "bounds")
_NUM = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_LABEL_RE = re.compile(r"""["']?(?:%s)["']?\s*[:=]\s*(?:"([^"]*)"|'([^']*)')""" % "|".join(LABEL_KEYS))
_FENCE_RE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|$)", re.S)


# The detection answer's shape. Box count and label length are bounded so a small
# model cannot run on (only the digits of a number are not).
DETECT_SCHEMA = {
    "type": "array", "maxItems": 32,
    "items": {"type": "object", "additionalProperties": False, "required": ["label", "bbox"], "properties": {
        "label": {"type": "string", "maxLength": 64},
        "bbox": {"type": "array", "minItems": 4, "maxItems": 4,
                 "items": {"type": "number", "minimum": 0, "maximum": 1}}}},
}


@dataclass(frozen=True)
class Box:
    label: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 with x1 <= x2, y1 <= y2

    def to_dict(self) -> dict:
        return {"label": self.label, "bbox": list(self.bbox)}


def boxes_from_json(text: str) -> list[Box]:
    """The boxes of a complete answer held to DETECT_SCHEMA; ValueError if it is not one."""
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(d, dict) and _box_from_dict(d) for d in value):
        raise ValueError("not a JSON array of {label, bbox} objects")
    return [_box_from_dict(d) for d in value]


def parse_boxes(text: str) -> list[Box]:
    """Every box in a model's answer; [] when there is none (never raises)."""
    body = _strip_fences(text)
    start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
    if start >= 0:
        value = _loads_lenient(body[start:])
        if value is not None:
            boxes = _boxes_from(value)
            if boxes:
                return boxes
    return _scan(body)


def _strip_fences(text: str) -> str:
    m = _FENCE_RE.search(text)
    return m.group(1) if m and ("[" in m.group(1) or "{" in m.group(1)) else text


def _loads_lenient(s: str):
    """JSON, or the same after repair, or a Python literal; None if all fail."""
    for candidate in (s, _repair(s)):
        try:
            return json.loads(candidate)
        except ValueError:
            pass
        # json.loads stops at trailing prose only by raising "Extra data": take the prefix.
        try:
            return json.JSONDecoder().raw_decode(candidate)[0]
        except ValueError:
            pass
    try:
        return ast.literal_eval(_repair(s, python=True))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _repair(s: str, python: bool = False) -> str:
    """Requote single-quoted strings, drop trailing commas, cut an unfinished
    element and close the brackets left open; stop after the first complete value."""
    out: list[str] = []
    stack: list[str] = []
    quote = None  # the quote char of the string we are in
    last_complete = 0  # len(out) after the last complete element at any depth
    i = 0
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\" and i + 1 < len(s):
                out.append("'" if s[i + 1] == "'" else s[i:i + 2])  # \' is not a JSON escape
                i += 2
                continue
            if c == quote:
                out.append('"')
                quote = None
            elif c == '"':  # a double quote inside a single-quoted string
                out.append('\\"')
            elif c == "\n":
                out.append("\\n")
            else:
                out.append(c)
        elif c in "\"'":
            quote = c
            out.append('"')
        elif c in "[{":
            stack.append("]" if c == "[" else "}")
            out.append(c)
        elif c in "]}":
            while out and out[-1].strip() in (",", ""):
                out.pop()  # trailing comma
            if stack:
                out.append(stack.pop())
            last_complete = len(out)
            if not stack:
                break  # the first complete value; the rest is prose
        elif c == ",":
            last_complete = len(out)
            out.append(c)
        else:
            out.append(c)
        i += 1
    if quote or stack:
        if quote:
            out.append('"')
        # An answer cut off mid-element: keep the elements that were complete.
        text = "".join(out)
        try:
            json.loads(text + "".join(reversed(_open(text))))
        except ValueError:
            out = out[:last_complete]
        text = "".join(out).rstrip().rstrip(",:")
        text += "".join(reversed(_open(text)))
    else:
        text = "".join(out)
    if python:
        return text
    return re.sub(r"\b(True|False|None)\b", lambda m: {"True": "true", "False": "false", "None": "null"}[m[1]], text)


def _open(text: str) -> list[str]:
    """The closers still owed by `text` (outside strings)."""
    stack: list[str] = []
    in_str = esc = False
    for c in text:
        if in_str:
            esc, in_str = (False, in_str) if esc else (c == "\\", c != '"')
        elif c == '"':
            in_str = True
        elif c in "[{":
            stack.append("]" if c == "[" else "}")
        elif c in "]}" and stack:
            stack.pop()
    return stack


def _boxes_from(value, depth: int = 0) -> list[Box]:
    if depth > 6:  # answers nest two or three levels; deeper is garbage (and recursion)
        return []
    if isinstance(value, dict):
        box = _box_from_dict(value)
        if box:
            return [box]
        # {"cat": [x1, y1, x2, y2], ...} or {"objects": [...]}
        found: list[Box] = []
        for key, v in value.items():
            coords = _coords(v)
            if coords:
                found.append(Box(str(key), coords))
            elif isinstance(v, (list, dict)):
                found += [b if b.label else Box(str(key), b.bbox) for b in _boxes_from(v, depth + 1)]
        return found
    if isinstance(value, list):
        coords = _coords(value)
        if coords:
            return [Box("", coords)]
        return [b for item in value for b in _boxes_from(item, depth + 1)]
    return []


def _box_from_dict(d: dict) -> Box | None:
    coords = next((c for c in (_coords(d.get(k)) for k in BOX_KEYS) if c), None)
    if coords is None and all(k in d for k in ("x1", "y1", "x2", "y2")):
        coords = _coords([d["x1"], d["y1"], d["x2"], d["y2"]])
    if coords is None:
        return None
    label = next((d[k] for k in LABEL_KEYS if isinstance(d.get(k), (str, int, float))), "")
    return Box(str(label), coords)


def _coords(v) -> tuple[float, float, float, float] | None:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _scan(text: str) -> list[Box]:
    """Last resort: each [a, b, c, d] with the nearest label before it (same object)."""
    boxes = []
    for m in _BOX_RE.finditer(text):
        before = text[:m.start()]
        cut = max(before.rfind("}"), before.rfind("{"))  # stay within this object
        labels = list(_LABEL_RE.finditer(before[cut + 1:] if cut >= 0 else before))
        after = _LABEL_RE.match(text[m.end():].lstrip(" ,\n\t"))  # label written after the box
        label = (labels[-1].group(1) or labels[-1].group(2)) if labels else (
            (after.group(1) or after.group(2)) if after else "")
        coords = _coords([float(g) for g in m.groups()])
        boxes.append(Box(label, coords))
    return boxes


def to_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel rectangle: coordinates up to 1 are taken as normalized, larger ones as pixels."""
    x1, y1, x2, y2 = box.bbox
    if max(abs(x1), abs(y1), abs(x2), abs(y2)) <= 1.0:
        x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
    clamp = lambda v, hi: int(round(min(max(v, 0), hi)))  # noqa: E731
    return clamp(x1, width - 1), clamp(y1, height - 1), clamp(x2, width - 1), clamp(y2, height - 1)


PALETTE = ((255, 56, 56), (56, 160, 255), (40, 200, 80), (255, 178, 29), (190, 70, 255), (0, 210, 210))


def draw_boxes(image, boxes: list[Box]):
    """A copy of the PIL image with each box outlined and labelled."""
    from PIL import ImageDraw, ImageFont

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, min(out.size) // 200)
    try:
        font = ImageFont.load_default(size=max(12, min(out.size) // 40))
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    labels = sorted({b.label for b in boxes})
    for box in boxes:
        color = PALETTE[labels.index(box.label) % len(PALETTE)]
        x1, y1, x2, y2 = to_pixels(box, *out.size)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        if box.label:
            l, t, r, b = draw.textbbox((0, 0), box.label, font=font)
            ty = y1 - (b - t) - 4 if y1 - (b - t) - 4 >= 0 else y1 + width
            draw.rectangle((x1, ty, x1 + (r - l) + 4, ty + (b - t) + 4), fill=color)
            draw.text((x1 + 2 - l, ty + 2 - t), box.label, fill=(255, 255, 255), font=font)
    return out
