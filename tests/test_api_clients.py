"""The local API judged by clients nobody here wrote: the official `openai` package and
curl, against the real server (uvicorn, the shared worker, a tiny random checkpoint)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from captioning.captioner import Captioner
from captioning.job import Job
from mlx_vlm_port.options import SamplingOptions
from tests.api_live import TIMEOUT, Live, chat_body, data_url, png, sse_events
from tests.images import synthetic_image

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def live(tiny_path, tmp_path_factory):
    server = Live(tiny_path, tmp_path_factory.mktemp("api") / "api-key")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.base, api_key=live.key, max_retries=0, timeout=TIMEOUT)


def messages(seed: int, text: str = "What is this?", detail: str | None = None, system: str | None = None,
             size: tuple[int, int] = (64, 48)) -> list:
    image = {"url": data_url(png(seed, *size))} | ({"detail": detail} if detail else {})
    user = {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": image}]}
    return ([{"role": "system", "content": system}] if system else []) + [user]


def test_models_lists_the_served_model(client, live):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [live.model] and listed.data[0].owned_by == "local"
    assert client.models.retrieve(live.model).id == live.model


def test_a_plain_completion_is_what_the_library_says_about_the_image(client, live, tiny_path):
    reply = client.chat.completions.create(model=live.model, messages=messages(3, system="Be brief."),
                                           max_tokens=6, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == live.model and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    direct = Captioner(str(tiny_path)).run(synthetic_image(64, 48, 3),
                                           Job("What is this?", "Be brief.", SamplingOptions(max_tokens=6,
                                                                                             temperature=0)),
                                           lambda piece: None)
    assert choice.message.content == direct.text and direct.text
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (direct.prompt_tokens,
                                                                         direct.generation_tokens)
    assert reply.usage.total_tokens == direct.prompt_tokens + direct.generation_tokens


def test_streaming_gives_the_same_text_in_chunks_and_a_final_usage_chunk(client, live):
    plain = client.chat.completions.create(model=live.model, messages=messages(4), max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=live.model, messages=messages(4), max_tokens=8,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    *body, last = chunks
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id and c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in body) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason]
    assert last.choices == [] and last.usage.model_dump() == plain.usage.model_dump() | {
        "completion_tokens_details": None, "prompt_tokens_details": None}
    without = list(client.chat.completions.create(model=live.model, messages=messages(4), max_tokens=8,
                                                  temperature=0, stream=True))
    assert all(c.choices and c.usage is None for c in without)  # no usage chunk unless asked


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sees_well_framed_server_sent_events(live):
    body = json.dumps(chat_body(live.model, image=5, max_tokens=6, stream=True,
                                stream_options={"include_usage": True}))
    done = subprocess.run(["curl", "-N", "-sS", "--fail-with-body", "--max-time", str(int(TIMEOUT)),
                           f"{live.base}/chat/completions", "-H", f"Authorization: Bearer {live.key}",
                           "-H", "Content-Type: application/json", "--data-binary", "@-", "-D", "/dev/stderr"],
                          input=body.encode(), capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert b"content-type: text/event-stream" in done.stderr.lower()
    events = sse_events(done.stdout)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_stop_string_ends_the_answer_before_it(client, live):
    full = client.chat.completions.create(model=live.model, messages=messages(6), max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    assert len(text) > 6, text
    stop = text[4:6]
    expected = text[:text.find(stop)]
    cut = client.chat.completions.create(model=live.model, messages=messages(6), max_tokens=16, temperature=0,
                                         stop=[stop, "never-in-this-text"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens <= full.usage.completion_tokens
    streamed = list(client.chat.completions.create(model=live.model, messages=messages(6), max_tokens=16,
                                                   temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_sampling_and_image_fields_reach_the_model(client, live):
    def ask(**fields):
        return client.chat.completions.create(model=live.model, **{"messages": messages(7), "max_tokens": 5,
                                                                   **fields})

    short = ask(max_tokens=2, temperature=0)
    assert short.usage.completion_tokens <= 2
    seeded = [ask(temperature=1.0, top_p=0.9, seed=11, extra_body={"min_p": 0.0, "repetition_penalty": 1.2})
              for _ in range(2)]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content  # the seed is used
    low = client.chat.completions.create(model=live.model, messages=messages(7, detail="low", size=(1024, 768)),
                                         max_tokens=1)
    high = client.chat.completions.create(model=live.model, messages=messages(7, detail="high", size=(1024, 768)),
                                          max_tokens=1)
    assert low.usage.prompt_tokens != high.usage.prompt_tokens  # image_url.detail picks the detail preset


def test_the_clients_own_errors_arrive_as_its_exceptions(client, live):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live.base, api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=messages(1))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=live.model, messages=messages(1), max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        client.chat.completions.create(model=live.model, messages=messages(1), response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}})
    assert client.chat.completions.create(model="default", messages=messages(1), max_tokens=1).choices


CAPTION = {"type": "object", "additionalProperties": False, "required": ["caption", "tags"],
           "properties": {"caption": {"type": "string", "maxLength": 40},
                          "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 12}}}}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_answers_parse_and_validate_through_the_client(client, live, seed):
    jsonschema = pytest.importorskip("jsonschema")
    response_format = {"type": "json_schema", "json_schema": {"name": "caption", "schema": CAPTION, "strict": True}}
    reply = client.chat.completions.create(model=live.model, messages=messages(seed), max_tokens=200,
                                           temperature=1.0, seed=seed, response_format=response_format)
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), CAPTION)
    streamed = list(client.chat.completions.create(model=live.model, messages=messages(seed), max_tokens=200,
                                                   temperature=1.0, seed=seed, response_format=response_format,
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == reply.choices[0].message.content
    obj = client.chat.completions.create(model=live.model, messages=messages(seed), max_tokens=200,
                                         temperature=1.0, seed=seed, response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":  # an unbounded object may outgrow the budget: then "length"
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    else:
        assert obj.choices[0].finish_reason == "length"
