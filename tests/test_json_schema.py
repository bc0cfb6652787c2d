"""Decoding held to a JSON Schema: whatever the random weights say, a finished
answer parses and validates (jsonschema is the independent judge), on both
families, greedy and sampled; an answer the budget cannot hold says "length"."""

import json

import jsonschema
import pytest

from captioning.errors import Exit, Failure
from captioning.job import Job
from captioning.protocol import job_fields, job_from_request
from mlx_vlm_port import PromptCache, generate, stream_generate
from mlx_vlm_port.constrain import JsonConstraint
from tests.images import synthetic_image
from tests.tiny_idefics3 import make_tiny_idefics3_checkpoint

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
CLOSED = {"additionalProperties": False}

# Each bounds its own size: enums, ranged integers, strings with maxLength, arrays
# with maxItems, no extra properties. (Whitespace between tokens is bounded by the engine.)
SCHEMAS = {
    "object with enum and integer": {
        "type": "object", **CLOSED, "required": ["color", "count"], "properties": {
            "color": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer", "minimum": 0, "maximum": 20}}},
    "array of short strings": {"type": "array", "minItems": 1, "maxItems": 4,
                               "items": {"type": "string", "maxLength": 12}},
    "nested with numbers": {
        "type": "object", **CLOSED, "required": ["title", "tags", "where"], "properties": {
            "title": {"type": "string", "maxLength": 20},
            "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["cat", "dog", "car"]}},
            "where": {"type": "object", **CLOSED, "required": ["x", "y"], "properties": {
                "x": {"type": "number", "minimum": 0, "maximum": 1},
                "y": {"type": "number", "minimum": -5, "maximum": 5}}}}},
    "boxes": {"type": "array", "maxItems": 3, "items": {
        "type": "object", **CLOSED, "required": ["label", "bbox"], "properties": {
            "label": {"type": "string", "maxLength": 10},
            "bbox": {"type": "array", "minItems": 4, "maxItems": 4,
                     "items": {"type": "number", "minimum": 0, "maximum": 1}}}}},
    "booleans and nulls": {
        "type": "object", **CLOSED, "required": ["ok", "note"], "properties": {
            "ok": {"type": "boolean"}, "note": {"type": ["string", "null"], "maxLength": 8}}},
}
SEEDS = range(8)
BUDGET = 600  # far more than any of the schemas above can take


@pytest.fixture(scope="module")
def families(tiny, tmp_path_factory):
    from mlx_vlm_port import load

    smol = load(make_tiny_idefics3_checkpoint(tmp_path_factory.mktemp("smol") / "smolvlm"))
    return {"lfm2_vl": tiny, "idefics3": smol}


@pytest.fixture(scope="module")
def image():
    return synthetic_image(96, 64, seed=3)


def run(model, processor, image, schema, cache=None, **kw):
    prompt = processor.apply_chat_template(MESSAGES)
    responses = list(stream_generate(model, processor, prompt, [image], json_schema=schema, prompt_cache=cache,
                                     **kw))
    return "".join(r.text for r in responses), responses


@pytest.mark.parametrize("family", ["lfm2_vl", "idefics3"])
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_answer_validates(families, image, family, name):
    model, processor = families[family]
    schema, cache = SCHEMAS[name], PromptCache(max_entries=1)
    settings = [dict(temperature=0.0)] + [dict(temperature=1.0, seed=s) for s in SEEDS] + [
        dict(temperature=1.5, top_p=0.95, seed=99), dict(temperature=0.8, min_p=0.05, repetition_penalty=1.3, seed=7)]
    for kw in settings:
        text, responses = run(model, processor, image, schema, cache, max_tokens=BUDGET, **kw)
        assert responses[-1].finish_reason == "stop", (kw, text)
        assert all(r.finish_reason is None for r in responses[:-1])
        jsonschema.validate(json.loads(text), schema)


def test_sampled_answers_differ(tiny, image):
    """The mask narrows the choice but leaves it to the sampler (not one forced text)."""
    model, processor = tiny
    cache = PromptCache(max_entries=1)
    texts = {run(model, processor, image, SCHEMAS["array of short strings"], cache, max_tokens=BUDGET,
                 temperature=1.0, seed=s)[0] for s in SEEDS}
    assert len(texts) > 4


def test_a_single_allowed_value_is_written_whatever_the_weights(families, image):
    for model, processor in families.values():
        text, responses = run(model, processor, image, {"enum": ["only this"]}, max_tokens=BUDGET, temperature=1.0,
                              seed=0)
        assert json.loads(text) == "only this" and responses[-1].finish_reason == "stop"


def test_json_object_mode(tiny, image):
    """{"type": "object"}: any JSON object. It does not bound its own size, so an
    answer may run out of budget; every one that finishes is an object."""
    model, processor = tiny
    cache, finished = PromptCache(max_entries=1), 0
    for seed in SEEDS:
        text, responses = run(model, processor, image, {"type": "object"}, cache, max_tokens=200, temperature=1.0,
                              seed=seed)
        if responses[-1].finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(text), dict)
        else:
            assert responses[-1].finish_reason == "length" and len(responses) == 200
            with pytest.raises(ValueError):
                json.loads(text)
    assert finished > 0


@pytest.mark.parametrize("max_tokens", [1, 5, 20])
def test_a_budget_too_small_says_length_not_stop(tiny, image, max_tokens):
    model, processor = tiny
    schema = {"type": "object", **CLOSED, "required": ["a", "b"], "properties": {
        "a": {"type": "string", "minLength": 40, "maxLength": 60}, "b": {"type": "integer"}}}
    text, responses = run(model, processor, image, schema, max_tokens=max_tokens, temperature=1.0, seed=1)
    assert responses[-1].finish_reason == "length" and responses[-1].generation_tokens == max_tokens
    assert len(responses) == max_tokens
    with pytest.raises(ValueError):
        json.loads(text)


def test_the_text_is_the_tokens(tiny, image):
    model, processor = tiny
    text, responses = run(model, processor, image, SCHEMAS["boxes"], max_tokens=BUDGET, temperature=1.0, seed=2)
    assert processor.decode([r.token for r in responses]) == text
    assert responses[-1].generation_tokens == len(responses)
    prompt = processor.apply_chat_template(MESSAGES)
    assert generate(model, processor, prompt, [image], max_tokens=BUDGET, temperature=1.0, seed=2,
                    json_schema=SCHEMAS["boxes"]) == text


def test_eos_only_once_the_value_is_complete(tiny):
    model, processor = tiny
    constraint = JsonConstraint(processor, {"enum": ["cat"]}, model.config.text_config.vocab_size)
    eos = sorted(processor.eos_token_ids)
    tokens = processor.tokenizer.encode('"cat"', add_special_tokens=False).ids
    for token in tokens:
        allowed = constraint.allowed()
        assert allowed.shape == (model.config.text_config.vocab_size,) and allowed[token]
        assert not allowed[eos].any() and not constraint.done
        constraint.advance(token)
    assert constraint.done and constraint.allowed()[eos].all()
    assert not constraint.allowed()[1024:].any()  # past the tokenizer's vocabulary: never


@pytest.mark.parametrize("schema,reason", [
    ({"not": {"type": "string"}}, "not"),
    ({"type": "colour"}, "colour"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
    ({"$ref": "#/definitions/missing"}, "missing"),
    ("object", "a dict"),
    (["object"], "a dict"),
])
def test_a_schema_the_engine_cannot_enforce_is_a_clear_value_error(tiny, image, schema, reason):
    model, processor = tiny
    prompt = processor.apply_chat_template(MESSAGES)
    with pytest.raises(ValueError, match="json_schema") as e:
        generate(model, processor, prompt, [image], max_tokens=5, json_schema=schema)
    assert reason in str(e.value) and "\n" not in str(e.value)


def test_ignore_eos_cannot_be_combined(tiny, image):
    model, processor = tiny
    with pytest.raises(ValueError, match="ignore_eos"):
        next(stream_generate(model, processor, processor.apply_chat_template(MESSAGES), [image],
                             json_schema={"type": "object"}, ignore_eos=True))


def test_job_and_protocol_carry_the_schema():
    schema = SCHEMAS["boxes"]
    job = Job("Find it.", json_schema=schema)
    fields = json.loads(json.dumps(job_fields(job)))  # as it travels
    assert job_from_request(fields).json_schema == schema
    assert "json_schema" not in job_fields(Job())
    assert job_from_request({"prompt": "x", "json_schema": None}).json_schema is None
    with pytest.raises(Failure) as e:
        job_from_request({"prompt": "x", "json_schema": "object"})
    assert e.value.code == Exit.USAGE and "json_schema" in e.value.message
    with pytest.raises(ValueError, match="json_schema"):
        Job(json_schema=["object"])
