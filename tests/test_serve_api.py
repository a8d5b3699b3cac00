"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official `openai` client."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from llmlab.model.config import ModelConfig  # noqa: E402
from llmlab.model.transformer import Transformer  # noqa: E402
from llmlab.serve.live import live_server  # noqa: E402


def _client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


def _post(url, data: bytes):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def tiny_model(smollm2_tokenizer):
    """A small random model with SmolLM2's vocabulary: fast, and a real tokenizer."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def tiny_server(tiny_model, smollm2_tokenizer):
    with live_server(tiny_model, smollm2_tokenizer, num_blocks=64, max_num_seqs=8) as s:
        yield s


def test_smollm2_chat_and_stream_and_echo_logprobs(smollm2, smollm2_tokenizer):
    with live_server(smollm2, smollm2_tokenizer, name="smollm2", num_blocks=64) as (base, worker):
        c = _client(base)
        assert [m.id for m in c.models.list().data] == ["smollm2"]
        msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
        r = c.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16, temperature=0)
        assert "Paris" in r.choices[0].message.content
        assert r.usage.completion_tokens <= 16
        chunks = list(c.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16, temperature=0,
                                                stream=True))
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert streamed == r.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        # echo + logprobs: what lm-eval's local-completions scores with; compare to the model itself
        ids = smollm2_tokenizer.encode("The capital of France is Paris")
        e = c.completions.create(model="smollm2", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
        lp = e.choices[0].logprobs
        assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
        with torch.no_grad():
            ref = torch.log_softmax(smollm2(torch.tensor([ids]))[0].float(), -1)
        want = [float(ref[i, ids[i + 1]]) for i in range(len(ids) - 1)]
        assert lp.token_logprobs[1:len(ids)] == pytest.approx(want, abs=1e-3)
        assert e.choices[0].text.startswith("The capital of France is Paris")


def test_models_health_and_completions(tiny_server):
    base, worker = tiny_server
    st, h = _get(base + "/health")
    assert st == 200 and h["status"] == "ok" and h["free_kv_blocks"] == h["total_kv_blocks"]
    c = _client(base)
    r = c.completions.create(model="m", prompt=["Hello there", "One two"], max_tokens=5, n=2, temperature=0.8,
                             seed=3, logprobs=2)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2, 3]
    assert all(len(ch.logprobs.token_logprobs) == len(ch.logprobs.tokens) for ch in r.choices)
    r2 = c.completions.create(model="m", prompt=["Hello there", "One two"], max_tokens=5, n=2, temperature=0.8,
                              seed=3, logprobs=2)
    assert [ch.text for ch in r.choices] == [ch.text for ch in r2.choices]  # per-request seeds
    s = list(c.completions.create(model="m", prompt="Hi", max_tokens=4, stream=True, temperature=0))
    assert s[-1].choices[0].finish_reason is not None
    ch = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                   logprobs=True, top_logprobs=2, stop=["zzz"])
    assert len(ch.choices[0].logprobs.content[0].top_logprobs) == 2


@pytest.mark.parametrize("body,status,param", [
    (dict(model="nope"), 404, "model"),
    (dict(temperature=2.5), 400, "temperature"),
    (dict(n=0), 400, "n"),
    (dict(n=99), 400, "n"),
    (dict(top_p=0), 400, "top_p"),
    (dict(prompt="word " * 400), 400, "prompt"),
    (dict(max_tokens=1000), 400, "max_tokens"),
    (dict(prompt=[]), 400, "prompt"),
    (dict(stop=[""]), 400, "stop"),
])
def test_bad_requests_get_openai_errors(tiny_server, body, status, param):
    base, _ = tiny_server
    c = _client(base)
    kw = dict(model="m", prompt="hello", max_tokens=4)
    kw.update(body)
    with pytest.raises(openai.APIStatusError) as ei:
        c.completions.create(**kw)
    assert ei.value.status_code == status
    err = ei.value.body
    assert err["param"] == param and err["message"] and err["type"]


def test_bad_json_and_bad_messages(tiny_server):
    base, _ = tiny_server
    st, body = _post(base + "/v1/chat/completions", b"{not json")
    assert st == 400 and "JSON" in body["error"]["message"]
    st, body = _post(base + "/v1/chat/completions", json.dumps({"model": "m", "messages": "hi"}).encode())
    assert st == 400 and body["error"]["param"] == "messages"
    st, body = _get(base + "/v1/nothing")
    assert st == 404 and "error" in body


def test_client_disconnect_frees_blocks(tiny_server):
    base, worker = tiny_server
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(
        {"model": "m", "prompt": "Tell me a story", "max_tokens": 200, "stream": True, "ignore_eos": True,
         "temperature": 0}).encode(), headers={"Content-Type": "application/json"})
    r = urllib.request.urlopen(req, timeout=30)
    r.readline()  # the first event arrived: the request is decoding
    assert worker.engine.num_free_blocks < worker.engine.cache.alloc.num_blocks
    r.close()
    t0 = time.monotonic()
    while worker.pending or worker.engine.has_work():
        assert time.monotonic() - t0 < 20, "disconnected request still holds blocks"
        time.sleep(0.05)
    assert worker.engine.num_free_blocks == worker.engine.cache.alloc.num_blocks


def test_flood_gets_429_and_server_survives(tiny_model, smollm2_tokenizer):
    with live_server(tiny_model, smollm2_tokenizer, max_pending=2, num_blocks=64) as (base, worker):
        body = json.dumps({"model": "m", "prompt": "flood", "max_tokens": 30, "ignore_eos": True}).encode()
        codes = []
        threads = [threading.Thread(target=lambda: codes.append(_post(base + "/v1/completions", body)[0]))
                   for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
        assert _get(base + "/health")[0] == 200
        assert _post(base + "/v1/completions", body)[0] == 200


def test_graceful_shutdown_finishes_in_flight_then_refuses(tiny_model, smollm2_tokenizer):
    with live_server(tiny_model, smollm2_tokenizer, num_blocks=64) as (base, worker):
        body = json.dumps({"model": "m", "prompt": "drain", "max_tokens": 60, "ignore_eos": True}).encode()
        res = []
        t = threading.Thread(target=lambda: res.append(_post(base + "/v1/completions", body)))
        t.start()
        while not worker.engine.has_work():
            time.sleep(0.01)
        stopper = threading.Thread(target=worker.shutdown, args=(20,))
        stopper.start()
        time.sleep(0.05)
        assert _post(base + "/v1/completions", body)[0] == 503
        assert _get(base + "/health")[0] == 503
        t.join(timeout=30)
        stopper.join(timeout=30)
        assert res and res[0][0] == 200 and res[0][1]["usage"]["completion_tokens"] == 60


def test_serve_config_errors_are_user_errors():
    from llmlab.config import load_config
    from llmlab.errors import UserError
    from llmlab.serve.commands import ServeConfig
    for bad in [["preempt=drop"], ["max_num_seqs=0"], ["prefill_chunk=4096", "max_prefill_tokens=1024"],
                ["engine.block_size=-1"], ["max_pending=0"]]:
        with pytest.raises(UserError):
            load_config(ServeConfig, bad)
    cfg = load_config(ServeConfig, ["max_num_seqs=4", "engine.preempt=recompute"])  # flat and nested keys
    assert cfg.engine.max_num_seqs == 4 and cfg.engine.preempt == "recompute" and cfg.engine.block_size == 16


def test_echo_scoring_batch_as_lm_eval_sends_it(tiny_server, smollm2_tokenizer):
    """lm-eval local-completions: several token-id prompts, echo, logprobs=1, max_tokens=1, then
    token_logprobs[ctxlen:-1] per choice (sorted by index)."""
    base, _ = tiny_server
    tok = smollm2_tokenizer
    ctx, conts = tok.encode("The sky is"), [tok.encode(" blue"), tok.encode(" green today")]
    st, r = _post(base + "/v1/completions", json.dumps(
        {"model": "m", "prompt": [ctx + c for c in conts], "max_tokens": 1, "logprobs": 1, "echo": True,
         "temperature": 0, "seed": 1234}).encode())
    assert st == 200
    for choice, c in zip(sorted(r["choices"], key=lambda x: x["index"]), conts):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ctx) + len(c) + 1  # prompt + the generated token
        cont = lp["token_logprobs"][len(ctx):-1]
        assert len(cont) == len(c) and all(x <= 0 for x in cont)
        assert all(t <= max(top.values()) + 1e-6 for t, top in zip(cont, lp["top_logprobs"][len(ctx):-1]))
    st, r = _post(base + "/v1/completions", json.dumps(
        {"model": "m", "prompt": ctx, "max_tokens": 0, "logprobs": 0, "echo": True, "n": 2}).encode())
    assert st == 200 and all(len(ch["logprobs"]["token_logprobs"]) == len(ctx) for ch in r["choices"])
