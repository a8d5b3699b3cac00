"""response_format (json_object, json_schema) and tools / tool_choice -> tool_calls through the
engine and the server, driven by the official `openai` client; per-request processor isolation."""
from __future__ import annotations

import json

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
jsonschema_rs = pytest.importorskip("jsonschema_rs")

from llmlab.infer.constrained import Constraint, ConstrainedLogits  # noqa: E402
from llmlab.infer.engine import Engine  # noqa: E402
from llmlab.infer.sampling import SamplingParams  # noqa: E402
from llmlab.model.config import ModelConfig  # noqa: E402
from llmlab.model.transformer import Transformer  # noqa: E402
from llmlab.serve.live import live_server  # noqa: E402

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                                           "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2}},
          "required": ["name", "age", "pets"]}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"]}}}
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(smollm2_tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = Transformer(cfg).eval()
    with live_server(model, smollm2_tokenizer, num_blocks=128, max_num_seqs=8) as (base, worker):
        yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120), worker


def test_json_schema_output_validates(server):
    c, _ = server
    r = c.chat.completions.create(model="m", messages=MSG, max_tokens=60, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    obj = json.loads(r.choices[0].message.content)
    assert jsonschema_rs.validator_for(PERSON).is_valid(obj), obj


@pytest.mark.slow
def test_sampled_json_schema_output_validates_per_choice(server):
    c, _ = server  # sampled, two choices, each its own constraint state (a flat random model: slow scans)
    r = c.chat.completions.create(model="m", messages=MSG, max_tokens=60, temperature=1.0, seed=3, n=2,
                                  response_format={"type": "json_schema",
                                                   "json_schema": {"name": "person", "schema": PERSON}})
    for ch in r.choices:
        assert jsonschema_rs.validator_for(PERSON).is_valid(json.loads(ch.message.content))


def test_json_object_mode_gives_an_object(server):
    c, _ = server
    r = c.chat.completions.create(model="m", messages=MSG, max_tokens=40, temperature=0,
                                  response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_required_tool_call_names_a_tool_with_valid_arguments(server):
    c, _ = server
    r = c.chat.completions.create(model="m", messages=MSG, max_tokens=60, temperature=0, tools=[WEATHER, ADD],
                                  tool_choice="required")
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    schema = {"get_weather": WEATHER, "add": ADD}[call.function.name]["function"]["parameters"]
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(call.function.arguments))


def test_named_tool_choice_streams_a_tool_call_and_accepts_the_result_turn(server):
    c, _ = server
    stream = c.chat.completions.create(model="m", messages=MSG, max_tokens=60, temperature=0, tools=[WEATHER, ADD],
                                       tool_choice={"type": "function", "function": {"name": "add"}}, stream=True)
    calls, finish, content = [], None, ""
    for chunk in stream:
        d = chunk.choices[0].delta
        calls += d.tool_calls or []
        content += d.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == "" and len(calls) == 1
    args = json.loads(calls[0].function.arguments)
    assert calls[0].function.name == "add" and set(args) == {"a", "b"}
    # the next turn carries the call and its result back
    r = c.chat.completions.create(model="m", max_tokens=8, temperature=0, tools=[ADD], messages=MSG + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0].id, "type": "function", "function": {
            "name": "add", "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "42"}])
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_bad_structured_requests_are_400(server):
    c, _ = server
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        c.chat.completions.create(model="m", messages=MSG, tools=[ADD],
                                  tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match=r"\$ref"):
        c.chat.completions.create(model="m", messages=MSG, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/defs/a"}}})
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=MSG, tool_choice="required")


def test_openapi_schema_lists_response_format_and_tools(server):
    import urllib.request
    c, _ = server
    with urllib.request.urlopen(str(c.base_url).removesuffix("v1/") + "openapi.json", timeout=30) as r:
        spec = json.loads(r.read())
    text = json.dumps(spec)
    assert "response_format" in text and "tool_choice" in text and "json_schema" in text


def test_a_failing_processor_fails_its_request_alone():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    model = Transformer(cfg).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    p = SamplingParams(max_new_tokens=6, ignore_eos=True)
    alone = Engine(model, None, num_blocks=64).generate(prompts, p)

    def boom(generated, logits):
        if len(generated) == 2:
            raise RuntimeError("bad grammar")
        return logits

    eng = Engine(model, None, num_blocks=64)
    rids = [eng.add_request(pr, p, logits_processor=boom if i == 1 else None) for i, pr in enumerate(prompts)]
    got, errors = {r: [] for r in rids}, {}
    while eng.has_work():
        for o in eng.step():
            if o.token_id is not None:
                got[o.request_id].append(o.token_id)
            if o.error:
                errors[o.request_id] = o.error
    assert list(errors) == [rids[1]] and "bad grammar" in errors[rids[1]]
    assert got[rids[0]] == alone[0][0] and got[rids[2]] == alone[2][0]
    assert all(r == 0 for r in eng.cache.alloc.ref)


@pytest.mark.slow
def test_engine_processor_equals_the_batch1_constrained_loop(smollm2_tokenizer):
    """The engine's per-request processor gives what generate_constrained gives (greedy)."""
    from llmlab.infer.constrained import generate_constrained
    tok = smollm2_tokenizer
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    model = Transformer(cfg).eval()
    ids = tok.encode("A person:")
    ref = generate_constrained(model, tok, ids, Constraint.json_schema(PERSON, tok), max_new_tokens=40)
    eng = Engine(model, tok, num_blocks=32)
    proc = ConstrainedLogits(Constraint.json_schema(PERSON, tok), 40)
    out = eng.generate([ids], SamplingParams(max_new_tokens=40, extra={"logits_processor": proc}))
    assert tok.decode(out[0][0]) == ref
    assert jsonschema_rs.validator_for(PERSON).is_valid(json.loads(ref))


def test_openai_parse_helpers_with_pydantic_models(server):
    """What users write: client.beta.chat.completions.parse(response_format=Model / tools=[...])."""
    from pydantic import BaseModel
    c, _ = server

    class City(BaseModel):
        name: str
        population: int
        capital: bool

    r = c.beta.chat.completions.parse(model="m", messages=MSG, response_format=City, max_tokens=24, temperature=0)
    assert isinstance(r.choices[0].message.parsed, City)
    r = c.beta.chat.completions.parse(model="m", messages=MSG, tools=[openai.pydantic_function_tool(City)],
                                      tool_choice="required", max_tokens=24, temperature=0)
    assert isinstance(r.choices[0].message.tool_calls[0].function.parsed_arguments, City)
