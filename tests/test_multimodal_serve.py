"""Images in `llmlab chat` and `llmlab serve` on a tiny LLaVA-style run: the terminal answer and the
server's (OpenAI client, base64 data URL image_url parts) equal the model's own greedy answer; a
text-only model, a non-image, a too-large image and a bad data URL are refused in one line / a 400."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import llmlab.multimodal.commands  # noqa: F401  (registers kind=llava with llmlab.infer.vision)
from llmlab.infer.vision import load_vision_model
from tiny_mm_model import data_url, png, save_tiny_llava

QUESTION = "what color is the shape?"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("mm"))


@pytest.fixture(scope="module")
def vm(run):
    return load_vision_model(str(run))


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmlab.cli", "chat", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_terminal_chat_answers_about_the_image(run, vm, tmp_path):
    (tmp_path / "red.png").write_bytes(png())
    want = vm.answer(vm.image(png()), QUESTION, 5)
    assert want
    r = _cli(f"model={run}", f"image={tmp_path / 'red.png'}", f"prompt={QUESTION}", "max_new_tokens=5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"assistant> {want}".strip()
    # a bad image: one line, exit 2; an image for a text-only model: one line naming it, exit 2
    (tmp_path / "bad.png").write_text("not a picture")
    r = _cli(f"model={run}", f"image={tmp_path / 'bad.png'}", "prompt=hi")
    assert r.returncode == 2 and "not a readable image" in r.stderr and "Traceback" not in r.stderr
    lm = run.parent / "lm"
    r = _cli(f"model={lm}", f"image={tmp_path / 'red.png'}", "prompt=hi")
    assert r.returncode == 2 and "text-only" in r.stderr and str(lm) in r.stderr


openai = pytest.importorskip("openai")


def _client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(url, text=QUESTION):
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_server_answers_image_url_parts_and_refuses_bad_ones(run, vm):
    from llmlab.serve.live import live_server
    red, blue = png(), png((0, 0, 255), (30, 20))
    with live_server(vm.lm, vm.tokenizer, name="llava", vision=vm, num_blocks=32, max_num_seqs=2) as (base, _):
        c = _client(base)
        got = []
        for img in (red, blue):
            r = c.chat.completions.create(model="llava", messages=_ask(data_url(img)), max_tokens=4)
            got.append(r.choices[0].message.content)
            assert got[-1] == vm.answer(vm.image(img), QUESTION, 4)
            assert r.usage.prompt_tokens == vm.prompt_tokens(QUESTION)
        assert got[0] and got[0] != got[1]  # the picture reaches the model
        chunks = list(c.chat.completions.create(model="llava", messages=_ask(data_url(red)), max_tokens=4,
                                                stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
            vm.answer(vm.image(red), QUESTION, 4)
        text = c.chat.completions.create(model="llava", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert text.choices[0].message.role == "assistant"  # text turns still run on the engine
        bad = {"not a readable image": data_url(b"hello, not a png"),
               "does not decode": "data:image/png;base64,@@@not-base64",
               "must look like": "data:text/plain;base64,aGVsbG8=",
               "remote URLs": "https://example.com/cat.png",
               "pixels": data_url(png(size=(5000, 5000)))}
        for why, url in bad.items():
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="llava", messages=_ask(url), max_tokens=2)
            err = e.value.body
            assert e.value.status_code == 400 and err["param"] == "messages", err
            assert why in err["message"], (why, err)


def test_text_only_model_refuses_images_naming_itself(vm):
    from llmlab.serve.live import live_server
    with live_server(vm.lm, vm.tokenizer, name="tiny-text", num_blocks=32, max_num_seqs=2) as (base, _):
        with pytest.raises(openai.BadRequestError) as e:
            _client(base).chat.completions.create(model="tiny-text", messages=_ask(data_url(png())), max_tokens=2)
    assert e.value.status_code == 400 and "'tiny-text'" in e.value.body["message"]
    assert e.value.body["code"] == "image_not_supported" and "text-only" in e.value.body["message"]


def test_an_encoder_run_is_refused_as_a_chat_model_in_one_line(tmp_path):
    from llmlab.errors import UserError
    from llmlab.infer.vision import vision_kind
    (tmp_path / "config.json").write_text('{"kind": "contrastive", "model": "clip"}')
    for call in (vision_kind, load_vision_model):
        with pytest.raises(UserError, match="kind 'contrastive'.*llmlab mm eval run_dir=") as e:
            call(str(tmp_path))
        assert str(tmp_path) in str(e.value)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # an HF dir: text-only, no error
    assert vision_kind(str(tmp_path)) is None


def test_image_chat_repl_says_the_size_and_quits_on_exit(vm, monkeypatch, capsys):
    from llmlab.infer.commands import image_chat
    typed = iter([QUESTION, "", "/exit", "never asked"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    assert image_chat(vm, data_url(png()), "", 4) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"(the model sees it at {vm.size}x{vm.size})" in out[0] and "/exit" in out[0]
    assert out[1:] == [f"assistant> {vm.answer(vm.image(png()), QUESTION, 4)}"]  # one answer, then /exit
    assert next(typed) == "never asked"


@pytest.mark.slow  # a CLI start imports torch
def test_mm_chat_answers_like_llmlab_chat(run, vm, tmp_path):
    (tmp_path / "red.png").write_bytes(png())
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", "mm", "chat", f"run_dir={run}",
                        f"image={tmp_path / 'red.png'}", f"question={QUESTION}", "max_new_tokens=5"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-2:] == [f"you> {QUESTION}", f"assistant> {vm.answer(vm.image(png()), QUESTION, 5)}"]
