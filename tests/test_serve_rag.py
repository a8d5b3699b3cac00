"""Retrieval-augmented chat in the server (`llmlab serve rag_index=PATH`, request field "rag"):
the prompt is `rag ask`'s, the sources are the index's chunks, streamed and not, and bad requests
are OpenAI 400s."""
from __future__ import annotations

import json

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

import llmlab.rag.commands  # noqa: E402,F401  (registers the server's RAG backend)
from llmlab.model.config import ModelConfig  # noqa: E402
from llmlab.model.transformer import Transformer  # noqa: E402
from llmlab.rag.answer import messages  # noqa: E402
from llmlab.rag.index import RagIndex  # noqa: E402
from llmlab.rag.loaders import Document  # noqa: E402
from llmlab.serve.live import live_server  # noqa: E402
from llmlab.serve.retrieval import Retrieval  # noqa: E402

DOCS = [Document("geo/france.md", "Paris is the capital of France. The Eiffel Tower stands in Paris.", "France"),
        Document("geo/germany.md", "Berlin is the capital of Germany. The Brandenburg Gate is in Berlin.", "Germany"),
        Document("food/cheese.md", "Camembert is a soft cheese made from cow's milk in Normandy.", "Cheese"),
        Document("space/moon.md", "The Moon orbits the Earth about once every 27 days.", "Moon")]
Q = "What is the capital of Germany?"


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rag") / "ix"
    idx = RagIndex(path, create=True, chunk_size=200)
    idx.add(DOCS)
    idx.close()
    return path


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=smollm2_tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def server(index_path, model, smollm2_tokenizer):
    rag = Retrieval(str(index_path), k=2)
    with live_server(model, smollm2_tokenizer, num_blocks=256, max_num_seqs=4, retrieval=rag) as (base, _):
        yield base, openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def _post(base, body):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sources_are_the_index_chunks_and_the_prompt_is_rag_asks(server, index_path, smollm2_tokenizer):
    base, c = server
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": Q}], max_tokens=8,
                                  temperature=0, extra_body={"rag": {"k": 3, "mode": "bm25"}})
    src = r.choices[0].message.model_extra["sources"]
    idx = RagIndex(index_path)
    try:
        hits = idx.search(Q, 3, "bm25")
        texts = {row[0] for row in idx.store.db.execute("SELECT text FROM chunks")}
    finally:
        idx.close()
    assert [s["n"] for s in src] == [1, 2, 3] and src[0]["source"] == "geo/germany.md" and src[0]["title"] == "Germany"
    assert [s["text"] for s in src] == [h.text for h in hits] and all(s["text"] in texts for s in src)
    tok = smollm2_tokenizer  # the prompt is exactly `rag ask`'s: same token count as built by llmlab.rag.answer
    want = tok.encode(tok.apply_chat_template(messages(Q, hits), add_generation_prompt=True))
    assert r.usage.prompt_tokens == len(want)
    plain = c.chat.completions.create(model="m", messages=[{"role": "user", "content": Q}], max_tokens=4, temperature=0)
    assert "sources" not in (plain.choices[0].message.model_extra or {})  # opt-in: others untouched
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens


def test_streamed_final_chunk_carries_the_sources(server):
    base, c = server
    chunks = list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": Q}], max_tokens=6,
                                            temperature=0, stream=True, extra_body={"rag": True}))
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(final) == 1
    src = final[0].choices[0].delta.model_extra["sources"]
    assert len(src) == 2 and src[0]["source"] == "geo/germany.md"  # the server's rag_k, hybrid retrieval
    assert all("sources" not in (ch.choices[0].delta.model_extra or {}) for ch in chunks if ch is not final[0])


def test_health_reports_the_index(server):
    import urllib.request
    with urllib.request.urlopen(server[0] + "/health") as r:
        h = json.loads(r.read())
    assert h["rag"]["sources"] == 4 and h["rag"]["chunks"] >= 4 and h["rag"]["k"] == 2


def test_cited_flags_follow_the_answer(index_path):
    from llmlab.rag.serving import ServeBackend
    b = ServeBackend(str(index_path))
    try:
        conv, hits, q = b.augment([{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}],
                                  3, "bm25")
        assert conv[0]["role"] == "system" and conv[0]["content"].endswith("Be brief.") and "[1]" in conv[1]["content"]
        src = b.sources("Berlin [1]. Also [9].", hits, q)
        assert [s["cited"] for s in src] == [True, False, False]
        # no marker: attributed by word overlap, as `rag ask` does
        assert b.sources("The Brandenburg Gate is in Berlin.", hits, q)[0]["cited"]
    finally:
        b.close()


def test_bad_rag_requests_are_openai_400s(server, model, smollm2_tokenizer, tmp_path):
    base, _ = server
    msg = [{"role": "user", "content": Q}]
    for bad in ({"k": 0}, {"k": 3, "mode": "magic"}, {"kk": 1}, "yes"):
        code, body = _post(base, {"model": "m", "messages": msg, "rag": bad})
        assert code == 400 and json.loads(body)["error"]["param"] == "rag", (bad, body)
    empty = tmp_path / "empty"
    RagIndex(empty, create=True).close()
    with live_server(model, smollm2_tokenizer, num_blocks=64, max_num_seqs=2,
                     retrieval=Retrieval(str(empty))) as (base2, _):
        code, body = _post(base2, {"model": "m", "messages": msg, "rag": True})
        err = json.loads(body)["error"]
        assert code == 400 and err["code"] == "rag_index_empty" and "empty" in err["message"]
    with live_server(model, smollm2_tokenizer, num_blocks=64, max_num_seqs=2) as (base3, _):
        code, body = _post(base3, {"model": "m", "messages": msg, "rag": True, "max_tokens": 2})
        err = json.loads(body)["error"]
        assert code == 400 and err["code"] == "rag_not_enabled" and err["type"] == "invalid_request_error"
        assert _post(base3, {"model": "m", "messages": msg, "rag": False, "max_tokens": 2})[0] == 200


def test_web_chat_toggle_shows_sources_under_the_answer(server, tmp_path):
    from selenium.webdriver.common.by import By  # noqa: F401  (_browser skips without selenium)

    from test_serve_browser import _browser, send_and_wait
    drv = _browser(tmp_path)
    try:
        drv.get(server[0] + "/")
        import time
        t0 = time.monotonic()
        while not drv.find_element(By.ID, "ragbox").is_displayed():
            assert time.monotonic() - t0 < 20, "the page shows no 'use documents' toggle"
            time.sleep(0.05)
        assert "4 documents" in drv.find_element(By.ID, "raginfo").text
        assert not drv.find_element(By.ID, "rag").is_selected()  # the server's rag_default is off

        for el, v in [("temperature", "0"), ("max_tokens", "4")]:
            drv.find_element(By.ID, el).clear()
            drv.find_element(By.ID, el).send_keys(v)
        send_and_wait(drv, "hello")
        assert not drv.find_elements(By.CSS_SELECTOR, ".sources")
        drv.find_element(By.ID, "rag").click()
        send_and_wait(drv, Q)
        items = drv.find_elements(By.CSS_SELECTOR, ".sources li")
        assert len(items) == 2 and items[0].text.startswith("[1] Germany")
        assert "geo/germany.md" in items[0].text and "Berlin" in items[0].text
        assert items[0].get_attribute("value") == "1"
        prev = drv.find_element(By.CSS_SELECTOR, ".sources").find_element(By.XPATH, "preceding-sibling::div[1]")
        assert "assistant" in prev.get_attribute("class")  # listed under the answer
    finally:
        drv.quit()


def test_cli_bad_rag_settings_exit_2_with_one_line(tmp_path):
    import subprocess
    import sys
    for args, want in ((["rag_index=" + str(tmp_path / "nope")], "no index at"),
                       (["rag_default=true"], "rag_default=true needs rag_index")):
        p = subprocess.run([sys.executable, "-m", "llmlab.cli", "serve", "model=" + str(tmp_path / "no_model"), *args],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and want in p.stderr and "Traceback" not in p.stderr, p.stderr
