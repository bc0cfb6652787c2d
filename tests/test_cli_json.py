"""`--json-schema FILE` and `--detect` through the real CLI on the tiny random
checkpoint: the printed JSON validates (jsonschema judges), boxes are 0..1,
bad schema files are usage errors before any model load, a cut-off answer is
an error rather than broken JSON."""

import json

import jsonschema
import pytest

from captioning.grounding import DETECT_SCHEMA
from tests.images import synthetic_image
from tests.test_cli import cli

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["subject", "colors", "indoor"],
          "properties": {"subject": {"type": "string", "maxLength": 16},
                         "colors": {"type": "array", "maxItems": 3, "items": {"enum": ["red", "green", "blue"]}},
                         "indoor": {"type": "boolean"}}}
SAMPLED = ["--temperature", "1", "--no-service"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("json_cli")
    synthetic_image(160, 120, 4).save(folder / "photo.png")
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    (folder / "broken.json").write_text('{"type": "object",')
    (folder / "list.json").write_text('["object"]')
    (folder / "unsupported.json").write_text('{"not": {"type": "string"}}')
    (folder / "latin1.json").write_bytes(b'{"type": "\xe9"}')
    return folder


def test_json_schema_answers_validate(files, tiny_path):
    for seed in range(3):
        done = cli(files / "photo.png", "--json-schema", files / "schema.json", "--model", tiny_path,
                   "--seed", seed, "--max-tokens", "300", *SAMPLED)
        assert done.returncode == 0, done.stderr
        jsonschema.validate(json.loads(done.stdout), SCHEMA)
        assert done.stderr == b""
    done = cli(files / "photo.png", "--json-schema", files / "schema.json", "--json", "--model", tiny_path,
               "--seed", "5", "--max-tokens", "300", *SAMPLED)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    jsonschema.validate(record["json"], SCHEMA)
    assert json.loads(record["caption"]) == record["json"]


@pytest.mark.parametrize("name,message", [
    ("missing.json", "no such file"),
    ("broken.json", "not JSON"),
    ("latin1.json", "not JSON"),
    ("list.json", "must hold a JSON Schema object"),
    ("unsupported.json", "not supported"),
])
def test_a_bad_schema_file_is_a_usage_error_before_the_model_loads(files, name, message):
    done = cli(files / "photo.png", "--json-schema", files / name, "--model", files / "no_such_model",
               "--no-service")
    assert done.returncode == 2, done.stderr  # not 4: the model was never looked for
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caption: error: --json-schema") and message in lines[0]
    assert done.stdout == b""


def test_json_schema_and_detect_do_not_combine(files):
    done = cli(files / "photo.png", "--json-schema", files / "schema.json", "--detect", "cat")
    assert done.returncode == 2 and b"cannot be combined" in done.stderr


def test_a_cut_off_answer_is_an_error_not_broken_json(files, tiny_path):
    done = cli(files / "photo.png", "--json-schema", files / "schema.json", "--model", tiny_path,
               "--max-tokens", "3", "--seed", "0", *SAMPLED)
    assert done.returncode == 1
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and "cut off at --max-tokens 3" in lines[0]


def test_detect_boxes_are_normalized_json(files, tiny_path):
    found = 0
    for seed in range(4):
        done = cli(files / "photo.png", "--detect", "cat", "--json", "--model", tiny_path, "--seed", seed,
                   "--max-tokens", "2000", *SAMPLED)
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout)
        answer = json.loads(record["caption"])  # the model's own answer is the JSON, strictly
        jsonschema.validate(answer, DETECT_SCHEMA)
        assert record["boxes"] == [{"label": b["label"], "bbox": [min(b["bbox"][0], b["bbox"][2]),
                                                                 min(b["bbox"][1], b["bbox"][3]),
                                                                 max(b["bbox"][0], b["bbox"][2]),
                                                                 max(b["bbox"][1], b["bbox"][3])]} for b in answer]
        for box in record["boxes"]:
            assert all(0 <= v <= 1 for v in box["bbox"]) and isinstance(box["label"], str)
        found += len(record["boxes"])
    assert found > 0


def test_detect_cut_off_keeps_the_complete_boxes_and_says_so(files, tiny_path):
    done = cli(files / "photo.png", "--detect", "cat", "--json", "--model", tiny_path, "--max-tokens", "5",
               "--seed", "0", *SAMPLED)  # seeded: the same answer every run
    assert done.returncode == 0, done.stderr
    assert "cut off at --max-tokens 5" in done.stderr.decode()
    assert isinstance(json.loads(done.stdout)["boxes"], list)


def test_help_does_not_import_the_grammar_engine():
    done = cli("--help", flags=["-X", "importtime"])
    assert done.returncode == 0 and b"--json-schema FILE" in done.stdout
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line}
    assert not any(m.split(".")[0] in ("llguidance", "jsonschema") or m == "mlx_vlm_port.constrain"
                   for m in modules)
