"""Property-based fuzzing of the server: schemathesis against its own OpenAPI schema (every
endpoint), and hypothesis strategies for chat messages and sampling parameters, in and out of
bounds. Invariants: no 5xx, every error in OpenAI format, no leaked slot or KV block, and the
server answers a normal request afterwards. LLMLAB_FUZZ_EXAMPLES sets the budget (the slow copy
runs 10x the fast one)."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("uvicorn")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llmlab.infer.sampling import SEED_MAX, SEED_MIN  # noqa: E402
from llmlab.serve.live import live_server  # noqa: E402
from tiny_serve_model import tiny_model  # noqa: E402

FAST = int(os.environ.get("LLMLAB_FUZZ_EXAMPLES", "30"))
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def fuzz_server(smollm2_tokenizer):
    # a 64-token context bounds every generation: the fuzzer explores inputs, not long outputs
    with live_server(tiny_model(smollm2_tokenizer, ctx=64), smollm2_tokenizer, name="m", max_pending=8,
                     num_blocks=48, max_num_seqs=8, max_tokens_default=8) as s:
        yield s


def _check_error_body(status: int, body) -> None:
    assert status < 500, (status, body)
    if status >= 400:
        err = body["error"]
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
        assert set(err) >= {"param", "code"}


def _assert_idle_and_alive(base: str, worker) -> None:
    t0 = time.monotonic()
    while worker.pending or worker.engine.has_work():
        assert time.monotonic() - t0 < 30, "slots still held after the fuzz run"
        time.sleep(0.02)
    with urllib.request.urlopen(base + "/health", timeout=30) as r:
        h = json.loads(r.read())
    assert h["in_flight"] == 0 and h["free_kv_blocks"] == h["total_kv_blocks"], h
    st_, body = _post(base, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 3})
    assert st_ == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")


def _post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read().decode()
            return r.status, (json.loads(raw) if not raw.startswith("data:") else raw)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ------------------------------------------------------------------ schemathesis over /openapi.json
def _operations(base: str):
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    return [r.ok() for r in schema.get_all_operations()]


def _schema_fuzz(base: str, examples: int) -> set[str]:
    """Positive and negative cases for every operation of the schema (schemathesis' own pytest
    plugin is driven by hand: its collection hooks do not support this pytest)."""
    from schemathesis import GenerationMode
    labels = set()
    for op in _operations(base):
        labels.add(op.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=examples, **SETTINGS)
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(timeout=60)
                ctype = response.headers.get("content-type", [""])
                ctype = ctype[0] if isinstance(ctype, list) else ctype
                body = response.json() if "json" in ctype else None
                _check_error_body(response.status_code, body)
                if case.method == "POST" and response.status_code == 200 and body is not None:
                    assert body["choices"] and body["usage"]["total_tokens"] >= body["usage"]["prompt_tokens"]
            try:
                run()
            except Unsatisfiable:  # no negative case exists for an operation without inputs (GET /health)
                assert mode == GenerationMode.NEGATIVE and case_free(op)
    return labels


def case_free(op) -> bool:
    return op.method.upper() == "GET"


def test_openapi_schema_fuzz(fuzz_server):
    labels = _schema_fuzz(fuzz_server[0], max(FAST // 8, 3))
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /health", "GET /v1/models"} <= labels


# ------------------------------------------------------------------ hypothesis: messages and sampling
_any_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                         max_leaves=6)
_content = st.one_of(st.text(max_size=40), st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(
    max_size=20)}), max_size=3), _any_json)
_role = st.sampled_from(["system", "user", "assistant", "tool", "wizard", "", "USER"]) | st.text(max_size=6)
_valid_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                  "content": st.text(max_size=30)}), min_size=1, max_size=4)
messages = _valid_messages | st.lists(st.fixed_dictionaries({"role": _role, "content": _content}), max_size=5) | _any_json


def _num(lo, hi):  # in bounds, at the edges, just outside, far outside, and the wrong type
    edge = [v for v in (lo, hi) if v is not None]
    return st.one_of(st.floats(lo if lo is not None else -1e6, hi if hi is not None else 1e6), st.sampled_from(edge),
                     st.sampled_from([1e-38, 1e-300, -1e-300, 1e308, -1.0, 2 ** 64, -(2 ** 64)]), _any_json)


_in_bounds = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 100), "min_p": st.floats(0, 1),
    "seed": st.integers(SEED_MIN, SEED_MAX), "repetition_penalty": st.floats(0.01, 100), "n": st.integers(1, 3),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2), "max_tokens": st.integers(1, 8),
    "no_repeat_ngram_size": st.integers(0, 4), "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
    "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20), "stream": st.booleans(), "ignore_eos": st.booleans()})
_wild = st.fixed_dictionaries({}, optional={
    "temperature": _num(0, 2), "top_p": _num(0, 1), "top_k": st.integers(-3, 10 ** 6) | _any_json,
    "min_p": _num(0, 1), "seed": st.integers(SEED_MIN - 2, SEED_MAX + 2) | _any_json,
    "repetition_penalty": _num(0.01, 100), "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2),
    "no_repeat_ngram_size": st.integers(-2, 2000) | _any_json, "n": st.integers(-1, 20) | _any_json,
    "max_tokens": st.integers(-2, 100) | _any_json, "stop": st.text(max_size=3) | st.lists(st.text(max_size=3),
                                                                                        max_size=6) | _any_json,
    "stop_token_ids": st.lists(st.integers(-2, 10 ** 10), max_size=3) | _any_json, "ignore_eos": _any_json,
    "logprobs": st.booleans() | st.integers(-1, 100) | _any_json, "top_logprobs": st.integers(-1, 30) | _any_json,
    "stream": st.booleans(), "stream_options": _any_json | st.fixed_dictionaries({"include_usage": st.booleans()}),
    "echo": _any_json,
})
sampling = _in_bounds | _wild


@settings(max_examples=FAST, **SETTINGS)
@given(msgs=messages, params=sampling)
def test_chat_messages_and_sampling_fuzz(fuzz_server, msgs, params):
    base, _ = fuzz_server
    status, body = _post(base, "/v1/chat/completions", {"model": "m", "messages": msgs, **params})
    _check_error_body(status, body)


@settings(max_examples=FAST // 2, **SETTINGS)
@given(prompt=st.text(max_size=30) | st.lists(st.integers(-1, 60000), max_size=8) | _any_json, params=sampling)
def test_completions_sampling_fuzz(fuzz_server, prompt, params):
    base, _ = fuzz_server
    status, body = _post(base, "/v1/completions", {"model": "m", "prompt": prompt, **params})
    _check_error_body(status, body)


def test_after_fuzzing_nothing_leaked_and_server_answers(fuzz_server):
    _assert_idle_and_alive(*fuzz_server)


@pytest.mark.slow
def test_longer_fuzz_run(fuzz_server):
    """The slow set: 10x the examples of the fast run on both endpoints, then the same invariants."""
    base = fuzz_server[0]

    @settings(max_examples=FAST * 10, **SETTINGS)
    @given(msgs=messages, params=sampling)
    def chat(msgs, params):
        _check_error_body(*_post(base, "/v1/chat/completions", {"model": "m", "messages": msgs, **params}))

    @settings(max_examples=FAST * 5, **SETTINGS)
    @given(prompt=st.text(max_size=30) | st.lists(st.integers(-1, 60000), max_size=8) | _any_json, params=sampling)
    def completions(prompt, params):
        _check_error_body(*_post(base, "/v1/completions", {"model": "m", "prompt": prompt, **params}))

    chat()
    completions()
    _schema_fuzz(base, FAST * 2)
    _assert_idle_and_alive(*fuzz_server)
