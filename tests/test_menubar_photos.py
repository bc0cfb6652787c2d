"""The menubar's Write Caption into Photos…: chosen files are captioned one at a time
on the worker and the answer written into each, as `--write-metadata` does (read back
with ExifTool); files that cannot or need not be written are notifications."""

import json
import shutil

import pytest

from captioning import metadata
from tests.images import synthetic_image
from tests.test_menubar_core import pump, rig  # noqa: F401  (the fixture)
from tests.test_metadata import FIELDS, exiftool, make_photo, write

pytest.importorskip("pyexiv2")
pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (.ci/run installs it)")
ANSWER = {"title": "Tram at dusk", "alt_text": "Red tram on a bridge", "description": "A red tram on a bridge.",
          "keywords": ["tram", "bridge", "river", "dusk", "city"]}


def test_chosen_photos_get_the_answer_written_one_at_a_time(rig, tmp_path):  # noqa: F811
    app, ui, _, lab, _ = rig
    lab.answers[metadata.prompt("English")] = "```json\n" + json.dumps(ANSWER) + "\n```"
    fresh, png = make_photo(tmp_path / "a.jpg"), make_photo(tmp_path / "d.png")
    described = make_photo(tmp_path / "b.jpg")
    write(described)
    kept = described.read_bytes()
    gif = tmp_path / "c.gif"
    synthetic_image(16, 16, 1).save(gif)
    calls = len(lab.calls)
    ui.chosen = [fresh, described, gif, png]
    app.write_into_photos()
    pump(app, lambda: len(ui.notes) == 4 and not app.writing)
    assert lab.max_running == 1 and len(lab.calls) == calls + 2  # only the two that can be written
    # a is sent; when it is written, b and c are checked (no model time) and d is sent.
    assert [title for title, _ in ui.notes] == ["Written into the photo", "Already described",
                                                "Not written into the photo", "Written into the photo"]
    assert ui.notes[0][1] == "a.jpg: Red tram on a bridge" and "c.gif" in ui.notes[2][1]
    for path in (fresh, png):
        tags = exiftool(path)
        assert tags["XMP-dc:Description"] == ANSWER["description"]
        assert tags["XMP-iptcCore:AltTextAccessibility"] == ANSWER["alt_text"]
        assert tags["XMP-photoshop:Headline"] == ANSWER["title"]
        assert tags["XMP-dc:Subject"] == ["family", "Paris"] + ANSWER["keywords"]
    assert described.read_bytes() == kept and exiftool(described)["XMP-dc:Description"] == FIELDS.description
    assert app.history[0]["kind"] == "metadata" and app.history[0]["prompt"] == str(png)
    assert app.history[0]["text"] == ANSWER["description"] and app.active == 0


def test_the_menu_language_goes_into_the_question(rig, tmp_path):  # noqa: F811
    app, ui, _, lab, _ = rig
    app.set_language("German")
    ui.chosen = [make_photo(tmp_path / "a.jpg")]
    app.write_into_photos()
    pump(app, lambda: ui.notes and not app.writing)
    assert lab.calls[-1]["prompt"] == metadata.prompt("German") and lab.calls[-1]["json_schema"] == metadata.SCHEMA
    assert ui.notes[-1][0] == "Written into the photo"  # the fake's plain answer is the description
    assert exiftool(tmp_path / "a.jpg")["XMP-dc:Description"].startswith("caption of")
