"""llmlab/serve/protocol.py on its own: request models, the translation to SamplingParams, bounds
taken from SamplingParams (declared once), max_tokens resolution and OpenAI-format errors."""
from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from llmlab.infer.sampling import SamplingParams, bounds
from llmlab.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, check_model, message_text,
                                   prompts_to_ids, resolve_max_tokens, sampling_params, validation_error)


def chat(**kw):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


def test_defaults_are_openai_and_fields_reach_sampling_params():
    p = sampling_params(chat(), 7, chat=True)
    assert (p.max_new_tokens, p.temperature, p.top_p, p.n, p.logprobs, p.seed) == (7, 1.0, 1.0, 1, None, None)
    p = sampling_params(chat(temperature=0, top_k=-1, seed=2 ** 64 - 1, stop="x", logprobs=True, top_logprobs=3,
                             repetition_penalty=1.2, stop_token_ids=[5], ignore_eos=True, n=2), 5, chat=True)
    assert (p.temperature, p.top_k, p.seed, p.stop, p.logprobs, p.repetition_penalty, p.stop_token_ids, p.ignore_eos,
            p.n) == (0, 0, 2 ** 64 - 1, ("x",), 3, 1.2, (5,), True, 2)
    c = CompletionRequest.model_validate({"model": "m", "prompt": "a", "logprobs": 2})
    assert sampling_params(c, 3, chat=False).logprobs == 2


def test_bounds_in_the_schema_are_sampling_params_own():
    schema = ChatCompletionRequest.model_json_schema()["properties"]
    for name in ("temperature", "min_p", "repetition_penalty", "presence_penalty", "n"):
        lo, hi, lo_open = bounds(name)
        spec = next(s for s in schema[name]["anyOf"] if "maximum" in s)
        assert spec["maximum"] == hi and spec["exclusiveMinimum" if lo_open else "minimum"] == lo
    lo, hi, lo_open = bounds("top_p")
    assert lo_open and next(s for s in schema["top_p"]["anyOf"] if "maximum" in s)["exclusiveMinimum"] == lo
    # every bounded SamplingParams field is in the table
    assert {f.name for f in dataclasses.fields(SamplingParams) if "bounds" in f.metadata} >= {
        "temperature", "top_p", "seed", "repetition_penalty", "n", "logprobs"}


@pytest.mark.parametrize("body,param", [
    ({"temperature": 2.5}, "temperature"), ({"temperature": True}, "temperature"), ({"temperature": "1"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"n": 17}, "n"), ({"seed": 2 ** 64}, "seed"), ({"repetition_penalty": 1e-300},
                                                                              "repetition_penalty"),
    ({"logprobs": 100}, "logprobs"), ({"top_logprobs": 21}, "top_logprobs"), ({"stream_options": "yes"},
                                                                                "stream_options"),
    ({"stop": ""}, "stop"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"), ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"), ({"model": 3}, "model"),
])
def test_invalid_fields_name_their_param(body, param):
    with pytest.raises(ValidationError) as ei:
        chat(**body)
    err = validation_error(ei.value.errors())
    assert err.status == 400 and err.param == param and err.message.startswith(f"'{param}")
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("content,where,says", [
    ([{"type": "text", "text": "q"}, {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}],
     "messages.0.content.1.image_url", 'must be an object {"url": "data:image/png;base64,..."}'),
    ([{"type": "text", "text": "q"}, {"type": "image", "image": "u"}], "messages.0.content.1",
     "expected tags: 'text', 'image_url'"),
    ([{"type": "image_url", "image_url": {}}], "messages.0.content.0.image_url.url", "Field required"),
    ([{"text": "q"}], "messages.0.content.0", "discriminator 'type'"),
    (5, "messages.0.content", "must be a string or a list of parts"),
])
def test_bad_content_parts_name_the_part_not_the_string_arm(content, where, says):
    with pytest.raises(ValidationError) as ei:
        chat(messages=[{"role": "user", "content": content}])
    err = validation_error(ei.value.errors())
    assert err.status == 400 and err.param == "messages" and err.message.startswith(f"'{where}': "), err.message
    assert says in err.message and "valid string" not in err.message


def test_json_and_shape_errors():
    from pydantic import TypeAdapter
    with pytest.raises(ValidationError) as ei:
        TypeAdapter(ChatCompletionRequest).validate_json(b"{bad")
    assert "parse the JSON" in validation_error(ei.value.errors()).message
    with pytest.raises(ValidationError) as ei:
        TypeAdapter(ChatCompletionRequest).validate_json(b"[1]")
    e = validation_error(ei.value.errors())
    assert e.param is None and "JSON object" in e.message


def test_model_check_message_text_and_unknown_fields():
    check_model("m", "m")
    with pytest.raises(APIError) as ei:
        check_model("x", "m")
    assert ei.value.status == 404 and ei.value.code == "model_not_found"
    r = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
             user="u", response_format={"type": "text"})  # unknown fields are accepted and ignored
    assert message_text(r.messages[0]) == "ab"


def test_resolve_max_tokens_follows_vllm():
    assert resolve_max_tokens(None, "max_tokens", 10, 64, 256, 1) == 54  # what fits, capped by the default
    assert resolve_max_tokens(None, "max_tokens", 10, 512, 256, 1) == 256
    assert resolve_max_tokens(5, "max_tokens", 10, 64, 256, 1) == 5
    for req, plen in [(60, 10), (None, 65), (None, 64)]:
        with pytest.raises(APIError) as ei:
            resolve_max_tokens(req, "max_tokens", plen, 64, 256, 1)
        assert ei.value.code == "context_length_exceeded"
    assert resolve_max_tokens(None, "max_tokens", 64, 64, 16, 0) == 0  # completions: echo scoring of a full window


def test_prompts_to_ids_forms():
    class Tok:
        def encode(self, s):
            return [ord(c) % 50 for c in s]
    assert prompts_to_ids("ab", Tok(), 50) == [[47, 48]]
    assert prompts_to_ids([1, 2], Tok(), 50) == [[1, 2]]
    assert prompts_to_ids([[1], [2, 3]], Tok(), 50) == [[1], [2, 3]]
    for bad in ([], [[1], [50]], [""], ["x"] * 65):
        with pytest.raises(APIError):
            prompts_to_ids(bad, Tok(), 50)
