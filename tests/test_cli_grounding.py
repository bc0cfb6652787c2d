"""captioning.grounding: the near-JSON box parser and the box drawing (no model needed)."""

import pytest
from PIL import Image

from captioning.grounding import Box, draw_boxes, parse_boxes, to_pixels

CAT = [("cat", (0.1, 0.2, 0.3, 0.4))]
CAT_DOG = CAT + [("dog", (0.5, 0.5, 0.9, 0.9))]

CASES = {
    "plain JSON": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}]', CAT),
    "single quotes": ("[{'label': 'cat', 'bbox': [0.1, 0.2, 0.3, 0.4]}]", CAT),
    "trailing commas": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4,],},]', CAT),
    "missing closing bracket": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}', CAT),
    "cut off mid element": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}, {"label": "dog", "bbox": [0.5, 0.', CAT),
    "cut off mid string": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}, {"label": "d', CAT),
    "code fence and prose": ('Sure! Here they are:\n```json\n[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}]\n```\n'
                             "Hope this helps.", CAT),
    "unclosed code fence": ('```\n[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}]', CAT),
    "text around, brackets after": ("Found: [{'label': 'cat', 'bbox': [1e-1, 0.2, 0.3, 0.4]}, ]  It's [done]", CAT),
    "single object": ('{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}', CAT),
    "python tuple and None": ("[{'label': 'cat', 'bbox': (0.1, 0.2, 0.3, 0.4), 'score': None}]", CAT),
    "mismatched closer": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4}]', CAT),
    "swapped corners": ('[{"label": "cat", "bbox": [0.3, 0.4, 0.1, 0.2]}]', CAT),
    "label -> box mapping": ('{"cat": [0.1, 0.2, 0.3, 0.4], "dog": [0.5, 0.5, 0.9, 0.9]}', CAT_DOG),
    "unquoted keys": ('[{label: "cat", bbox: [0.1, 0.2, 0.3, 0.4]}, {label: "dog", bbox: [0.5, 0.5, 0.9, 0.9]}]',
                      CAT_DOG),
    "missing comma between objects": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]} '
                                      '{"label": "dog", "bbox": [0.5, 0.5, 0.9, 0.9]}]', CAT_DOG),
    "numbers as strings": ('[{"label": "cat", "bbox": ["0.1", "0.2", "0.3", "0.4"]}]', CAT),
    "other key names": ('[{"name": "cat", "box_2d": [0.1, 0.2, 0.3, 0.4]}]', CAT),
    "apostrophe in label": ('[{"label": "the cat\'s toy", "bbox": [0.1, 0.2, 0.3, 0.4]}]',
                            [("the cat's toy", (0.1, 0.2, 0.3, 0.4))]),
    "double quote in single-quoted label": ("[{'label': 'a \"big\" cat', 'bbox': [0.1, 0.2, 0.3, 0.4]}]",
                                            [('a "big" cat', (0.1, 0.2, 0.3, 0.4))]),
    "bare box list": ("[[0.1, 0.2, 0.3, 0.4]]", [("", (0.1, 0.2, 0.3, 0.4))]),
    "pixel coordinates": ('[{"label": "cat", "bbox_2d": [10, 20, 30, 40]}]', [("cat", (10, 20, 30, 40))]),
    "empty list": ("[]", []),
    "no JSON at all": ("I could not find any cat in this image.", []),
    "empty answer": ("", []),
    "three coordinates": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3]}]', []),
    "truncated inside the only box": ('[{"label": "cat", "bbox": [0.1, 0.2, 0.3', []),
}


@pytest.mark.parametrize("text,expected", list(CASES.values()), ids=list(CASES))
def test_parse_boxes(text, expected):
    boxes = parse_boxes(text)
    assert [(b.label, b.bbox) for b in boxes] == [(label, pytest.approx(bbox)) for label, bbox in expected]


def test_parse_never_raises_on_garbage():
    for text in ["[" * 500, "{" * 200 + "'", "]]]}}}", "[{'a': [1, 2, 3, 4", "```", "[\\'x']", "\x00[1,2,3,4]"]:
        assert isinstance(parse_boxes(text), list)


def test_to_pixels_normalized_and_pixels():
    assert to_pixels(Box("a", (0.1, 0.2, 0.5, 1.0)), 200, 100) == (20, 20, 100, 99)
    assert to_pixels(Box("a", (10, 20, 300, 40)), 200, 100) == (10, 20, 199, 40)  # clamped to the image


def test_draw_boxes_outlines_and_labels():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    drawn = draw_boxes(image, [Box("cat", (0.1, 0.3, 0.5, 0.8))])
    assert image.getpixel((20, 50)) == (128, 128, 128)  # the input is not modified
    edge = drawn.getpixel((20, 50))  # left edge of the box: x = 0.1 * 200
    assert edge != (128, 128, 128) and max(edge) == 255
    assert drawn.getpixel((60, 55)) == (128, 128, 128)  # inside the box stays untouched
    label_area = [drawn.getpixel((x, y)) for x in range(20, 40) for y in range(10, 30)]
    assert any(p != (128, 128, 128) for p in label_area)  # the label sits above the box
