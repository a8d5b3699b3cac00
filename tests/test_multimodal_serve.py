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
