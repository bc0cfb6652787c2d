"""`python -m app.caption --write-metadata` for real, on the tiny random checkpoint.

Its answers are gibberish (no JSON), so the plain answer becomes the description
and alt text; ExifTool reads back what the command says it wrote.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioning import metadata
from tests.images import synthetic_image
from tests.test_metadata import FIELDS, exiftool, make_photo, write

pytest.importorskip("pyexiv2")
pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (.ci/run installs it)")
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-tokens", "160", "--temperature", "0", "--no-service"]


def cli(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}
    return subprocess.run([sys.executable, "-m", "app.caption", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=180, env=env)


def lines(done) -> list[str]:
    return done.stderr.decode().splitlines()


def test_a_batch_writes_the_good_files_and_reports_each_bad_one(tmp_path_factory, tiny_path):
    tmp_path = tmp_path_factory.mktemp("photos")
    elsewhere = make_photo(tmp_path_factory.mktemp("elsewhere") / "x.jpg")
    good = [make_photo(tmp_path / "a.jpg"), make_photo(tmp_path / "b.png")]
    readonly = make_photo(tmp_path / "c.jpg")
    os.chmod(readonly, 0o444)
    (tmp_path / "d.jpg").symlink_to(elsewhere)
    synthetic_image(32, 32, 1).save(tmp_path / "e.gif")
    untouched = {p: p.read_bytes() for p in (readonly, tmp_path / "e.gif", elsewhere)}
    done = cli(tmp_path, "--write-metadata", "--json", "--model", tiny_path, *FAST)
    assert done.returncode == 3, done.stderr
    errors = lines(done)
    assert len(errors) == 3 and all(e.startswith("caption: error: ") for e in errors), errors
    assert "c.jpg: read-only" in errors[0] and "d.jpg: is a symbolic link" in errors[1] and "e.gif" in errors[2]
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [Path(r["path"]).name for r in records] == ["a.jpg", "b.png"]
    for record, path in zip(records, good):
        meta = record["metadata"]
        assert meta["written"] is True and meta["file"] == str(path)
        # The answer is held to SCHEMA (cut off by --max-tokens here): what is written is what the reader makes of it.
        assert meta["description"] and meta == {**metadata.parse_answer(record["caption"]).to_dict(),
                                                "file": meta["file"], "written": True}
        tags = exiftool(path)
        assert tags["XMP-dc:Description"] == meta["description"]
        assert tags["XMP-iptcCore:AltTextAccessibility"] == meta["alt_text"]
        subject = tags["XMP-dc:Subject"]
        assert (subject if isinstance(subject, list) else [subject]) == ["family", "Paris"] + [
            k for k in meta["keywords"] if k.lower() not in ("family", "paris")]  # the user's first, none lost
    assert all(p.read_bytes() == data for p, data in untouched.items())
    assert (tmp_path / "d.jpg").is_symlink()


def test_described_photos_are_skipped_unless_overwrite(tmp_path, tiny_path):
    path = make_photo(tmp_path / "a.jpg")
    write(path)  # a description is there already
    before = path.read_bytes()
    done = cli(path, "--write-metadata", "--model", tiny_path, *FAST)
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    assert "already has a description; skipped" in done.stderr.decode()
    assert path.read_bytes() == before
    done = cli(path, "--write-metadata", "--overwrite", "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr
    tags = exiftool(path)
    assert tags["XMP-dc:Description"] != FIELDS.description
    assert tags["XMP-photoshop:Headline"] not in ("", FIELDS.title)  # the schema's answer has a title: replaced
    assert tags["XMP-dc:Subject"][:2] == ["family", "Paris"]


def test_dry_run_prints_and_writes_nothing(tmp_path, tiny_path):
    path = make_photo(tmp_path / "a.jpg")
    before, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
    done = cli(path, "--write-metadata", "sidecar", "--dry-run", "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert out.startswith("title: ") and "\nalt text: " in out and f"dry run, would write: {tmp_path / 'a.xmp'}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime


def test_sidecar_naming_and_the_jsonl_resume(tmp_path, tiny_path):
    path = make_photo(tmp_path / "IMG_0001.JPG")
    before = path.read_bytes()
    log = tmp_path / "log.jsonl"
    done = cli(path, "--write-metadata", "sidecar", "--sidecar-name", "darktable", "--jsonl", log,
               "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr
    sidecar = tmp_path / "IMG_0001.JPG.xmp"
    record = json.loads(log.read_text())
    assert record["metadata"]["file"] == str(sidecar)
    assert exiftool(sidecar)["XMP-dc:Description"] == record["metadata"]["description"]
    assert path.read_bytes() == before
    again = cli(path, "--write-metadata", "sidecar", "--sidecar-name", "darktable", "--jsonl", log,
                "--model", tiny_path, *FAST)
    assert again.returncode == 0 and "skipping 1 of 1 images already in" in again.stderr.decode()
    assert len(log.read_text().splitlines()) == 1


def test_stdin_and_usage_errors(tmp_path, tiny_path):
    path = make_photo(tmp_path / "a.jpg")
    done = cli("-", "--write-metadata", "--model", tiny_path, *FAST, stdin=path.read_bytes())
    assert done.returncode == 3 and "writes into image files" in done.stderr.decode()
    for args, message in ((["--dry-run"], "only apply with --write-metadata"),
                          (["--write-metadata", "-p", "hi"], "cannot be combined"),
                          (["--write-metadata", "--json-schema", str(path)], "cannot be combined"),
                          (["--write-metadata", "somewhere"], "invalid choice")):
        done = cli(path, *args, "--model", tiny_path, *FAST)
        assert done.returncode == 2 and message in done.stderr.decode(), done.stderr
        assert len(lines(done)) == 1


def test_the_language_goes_into_the_question_and_the_schema_matches_the_limits():
    assert "in German" in metadata.prompt("German") and "in English" in metadata.prompt()
    props = metadata.SCHEMA["properties"]
    assert set(metadata.SCHEMA["required"]) == set(props) == set(metadata.Fields.__dataclass_fields__)
    # An answer at the schema's bounds passes the lenient reader unchanged.
    answer = {"title": " ".join(["word"] * metadata.TITLE_WORDS), "alt_text": "a" * props["alt_text"]["maxLength"],
              "description": "d" * props["description"]["maxLength"],
              "keywords": [f"k{i}" * 4 for i in range(props["keywords"]["maxItems"])]}
    assert metadata.parse_answer(json.dumps(answer)).to_dict() == answer


def test_a_missing_pyexiv2_is_one_line_naming_the_extra(tmp_path):
    path = make_photo(tmp_path / "a.jpg")
    before = path.read_bytes()
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "pyexiv2.py").write_text("raise ImportError('blocked for this test')\n")
    env = {**{k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}, "PYTHONPATH": str(blocker)}
    done = subprocess.run([sys.executable, "-m", "app.caption", str(path), "--write-metadata", "--no-service"],
                          cwd=ROOT, capture_output=True, timeout=120, env=env)
    assert done.returncode == 1
    assert done.stderr.decode() == ('caption: error: writing metadata needs pyexiv2: '
                                    'pip install "mlx-vlm-port[metadata]"\n')
    assert path.read_bytes() == before


def test_the_metadata_answer_is_held_to_its_schema():
    """--write-metadata asks for SCHEMA's object and the Job holds the answer to it."""
    from app.caption import build_parser, make_job

    job = make_job(build_parser().parse_args(["x.jpg", "--write-metadata"]))
    assert job.json_schema == metadata.SCHEMA
