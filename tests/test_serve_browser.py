"""End to end in headless Chromium: load the web chat, send a message, watch the reply stream in,
press Stop on a second one, take a screenshot.

Needs the Debian packages `chromium` and `chromium-driver` and the `selenium` pip package; without
them this test skips and says what to install.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from llmlab.serve.live import live_server

INSTALL = ("install the browser: `apt-get update && apt-get install -y chromium chromium-driver` "
           "and the driver binding: `pip install selenium`")


def _browser(tmp_path):
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip(f"headless Chromium not found (chromium={chrome}, chromedriver={driver}): {INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed: {INSTALL}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--no-first-run",
              "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700"]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def send_and_wait(drv, text: str, timeout: float = 30) -> None:
    """Type `text` into the web chat, send it, and wait until one more message is marked done."""
    from selenium.webdriver.common.by import By
    n = len(drv.find_elements(By.CSS_SELECTOR, ".msg[data-done]"))
    drv.find_element(By.ID, "input").send_keys(text)
    drv.find_element(By.ID, "send").click()
    t0 = time.monotonic()
    while len(drv.find_elements(By.CSS_SELECTOR, ".msg[data-done]")) <= n:
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


def test_web_chat_streams_a_reply_and_stops(smollm2, smollm2_tokenizer, tmp_path):
    from selenium.webdriver.common.by import By

    with live_server(smollm2, smollm2_tokenizer, name="smollm2", num_blocks=64) as (base, worker):
        drv = _browser(tmp_path)
        try:
            drv.get(base + "/")
            t0 = time.monotonic()
            while "smollm2" not in drv.find_element(By.ID, "model").text:
                assert time.monotonic() - t0 < 20, "the page did not load the model list"
                time.sleep(0.05)
            for el, v in [("temperature", "0"), ("max_tokens", "24")]:
                drv.find_element(By.ID, el).clear()
                drv.find_element(By.ID, el).send_keys(v)
            drv.find_element(By.ID, "input").send_keys("What is the capital of France?")
            drv.find_element(By.ID, "send").click()
            seen = set()
            t0 = time.monotonic()
            while True:
                msgs = drv.find_elements(By.CSS_SELECTOR, ".msg.assistant")
                if msgs:
                    seen.add(msgs[-1].text)
                    if msgs[-1].get_attribute("data-done"):
                        break
                assert time.monotonic() - t0 < 90, "no complete reply"
                time.sleep(0.02)
            reply = msgs[-1].text
            assert "Paris" in reply
            assert len([s for s in seen if s and s != reply]) >= 1, "the reply did not arrive incrementally"
            shot = tmp_path / "chat.png"
            drv.save_screenshot(str(shot))
            assert shot.stat().st_size > 1000
            if os.environ.get("LLMLAB_SCREENSHOT_DIR"):
                shutil.copy(shot, os.environ["LLMLAB_SCREENSHOT_DIR"])
            # second turn (multi-turn history) with a long answer: press Stop while it streams
            drv.find_element(By.ID, "max_tokens").clear()
            drv.find_element(By.ID, "max_tokens").send_keys("400")
            drv.find_element(By.ID, "input").send_keys("Now write a long story about that city.")
            drv.find_element(By.ID, "send").click()
            t0 = time.monotonic()
            while len(drv.find_elements(By.CSS_SELECTOR, ".msg.assistant")) < 2 or \
                    not drv.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text:
                assert time.monotonic() - t0 < 60
                time.sleep(0.02)
            drv.find_element(By.ID, "stop").click()
            t0 = time.monotonic()
            while worker.pending or worker.engine.has_work():
                assert time.monotonic() - t0 < 20, "Stop did not cancel the request on the server"
                time.sleep(0.05)
            assert worker.engine.num_free_blocks == worker.engine.cache.alloc.num_blocks
            assert len(drv.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2
        finally:
            drv.quit()


def test_web_chat_drops_a_failed_turn_from_the_history(smollm2_tokenizer, tmp_path):
    """A turn that failed (here: max_tokens beyond the context, a 400) is shown as an error and is
    not sent again with the next turn; a good turn is kept with its reply."""
    from selenium.webdriver.common.by import By

    from tiny_serve_model import tiny_model

    with live_server(tiny_model(smollm2_tokenizer), smollm2_tokenizer, name="m", num_blocks=64) as (base, worker):
        drv = _browser(tmp_path)
        try:
            drv.get(base + "/")
            t0 = time.monotonic()
            while "m" not in drv.find_element(By.ID, "model").text.replace("model:", ""):
                assert time.monotonic() - t0 < 20
                time.sleep(0.05)

            def turn(text, max_tokens):
                drv.find_element(By.ID, "max_tokens").clear()
                drv.find_element(By.ID, "max_tokens").send_keys(max_tokens)
                send_and_wait(drv, text)
                return drv.execute_script("return window.chatHistory()")

            assert turn("first", "100000") == []  # the 400 turn is dropped
            assert drv.find_elements(By.CSS_SELECTOR, ".msg.error")
            hist = turn("second", "3")
            assert [m["role"] for m in hist] == ["user", "assistant"] and hist[0]["content"] == "second"
            assert hist[1]["content"]
        finally:
            drv.quit()


def test_web_chat_sends_an_uploaded_image(tmp_path):
    """The Image button attaches a picture; it goes out as an OpenAI image_url data-URL part and the
    answer equals the vision-language model's own; a follow-up question is about the same picture."""
    from selenium.webdriver.common.by import By

    import llmlab.multimodal.commands  # noqa: F401  (registers kind=llava)
    from llmlab.infer.vision import load_vision_model
    from tiny_mm_model import png, save_tiny_llava

    vm = load_vision_model(str(save_tiny_llava(tmp_path / "mm")))
    (tmp_path / "blue.png").write_bytes(png((0, 0, 255)))
    with live_server(vm.lm, vm.tokenizer, name="llava", vision=vm, num_blocks=32, max_num_seqs=2) as (base, _):
        drv = _browser(tmp_path)
        try:
            drv.get(base + "/")
            t0 = time.monotonic()
            while "llava" not in drv.find_element(By.ID, "model").text:
                assert time.monotonic() - t0 < 20
                time.sleep(0.05)
            drv.find_element(By.ID, "max_tokens").clear()
            drv.find_element(By.ID, "max_tokens").send_keys("4")
            drv.execute_script("document.getElementById('image').hidden = false")
            drv.find_element(By.ID, "image").send_keys(str(tmp_path / "blue.png"))
            t0 = time.monotonic()
            while not drv.find_element(By.ID, "preview").is_displayed():
                assert time.monotonic() - t0 < 10, "the picture was not attached"
                time.sleep(0.02)
            want = {q: vm.answer(vm.image(png((0, 0, 255))), q, 4) for q in ("what shape is it?", "what color?")}
            for i, q in enumerate(want):
                drv.find_element(By.ID, "input").send_keys(q)
                drv.find_element(By.ID, "send").click()
                t0 = time.monotonic()
                while len(drv.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done]")) <= i:
                    assert time.monotonic() - t0 < 30
                    time.sleep(0.02)
                msg = drv.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
                assert "error" not in msg.get_attribute("class"), msg.text
                assert msg.text == want[q].strip()
            hist = drv.execute_script("return window.chatHistory()")
            assert hist[0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
            assert hist[2]["content"] == "what color?" and drv.find_elements(By.CSS_SELECTOR, ".msg.user img")
        finally:
            drv.quit()
