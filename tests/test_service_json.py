"""A JSON Schema travelling to the real headless service (tiny random checkpoint):
the answer validates, an unenforceable schema is a bad request (code 2), and
the CLI's --json-schema and --detect go through the service too."""

import json
import re

import jsonschema

from captioning.grounding import DETECT_SCHEMA
from tests.test_cli import cli
from tests.test_service import caption_request, png, request, server  # noqa: F401 (its service, one per module)

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["animal", "legs"],
          "properties": {"animal": {"enum": ["cat", "dog", "bird"]},
                         "legs": {"type": "integer", "minimum": 0, "maximum": 8}}}


def test_the_service_holds_answers_to_the_schema(server):
    for seed in range(3):
        message = {**caption_request(seed, json_schema=SCHEMA, temperature=1.0, max_tokens=200), "seed": seed}
        replies = request(server.sock_path, message)
        done = replies[-1]
        assert done["type"] == "done" and done["finish_reason"] == "stop", replies
        jsonschema.validate(json.loads(done["text"]), SCHEMA)


def test_the_service_refuses_what_it_cannot_enforce(server):
    replies = request(server.sock_path, caption_request(1, json_schema={"not": {"type": "string"}}))
    assert replies[-1]["type"] == "error" and replies[-1]["code"] == 2
    assert "json_schema" in replies[-1]["message"] and "\n" not in replies[-1]["message"]
    replies = request(server.sock_path, caption_request(1, json_schema="object"))
    assert replies[-1]["type"] == "error" and replies[-1]["code"] == 2
    done = request(server.sock_path, caption_request(2))[-1]  # and it keeps serving
    assert done["type"] == "done"


# the CLI's jobs have uuid4 hex ids; this module's other requests are named img-N, and
# the last of them may be logged just after its reply, so a count of all jobs can miss it
CLI_JOB_DONE = re.compile(r"job [0-9a-f]{32}: done,")


def test_the_cli_sends_its_schema_to_the_service(server, tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "a.png").write_bytes(png(5))
    env = {"MLX_VLM_PORT_RUNTIME_DIR": str(server.run_dir)}
    assert server.wait_log(CLI_JOB_DONE, 0) == 0
    done = cli(tmp_path / "a.png", "--json-schema", tmp_path / "schema.json", "--temperature", "1",
               "--max-tokens", "200", env=env)
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads(done.stdout), SCHEMA)
    done = cli(tmp_path / "a.png", "--detect", "cat", "--json", "--temperature", "1", "--max-tokens", "2000", env=env)
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads(json.loads(done.stdout)["caption"]), DETECT_SCHEMA)
    assert server.wait_log(CLI_JOB_DONE, 2) == 2  # the service did both, not an in-process model
