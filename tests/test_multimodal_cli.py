"""`llmlab mm` end to end on a tiny run, and bad input: images that are not images, too large, odd
modes (converted), mismatched vision/data dimensions (one line, exit code 2)."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from llmlab.errors import UserError
from llmlab.multimodal.image_io import load_image


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_modes_are_converted():
    rgb = Image.new("RGB", (10, 10), (255, 0, 0))
    for im in (rgb, rgb.convert("P"), rgb.convert("RGBA"), rgb.convert("L"), rgb.convert("LA")):
        x = load_image(_png(im), 4)
        assert x.shape == (3, 4, 4) and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(load_image(_png(rgb), 4)[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent: composited on white
    assert torch.allclose(load_image(_png(clear), 4), torch.ones(3, 4, 4))
    deep = Image.new("I;16", (4, 4))
    deep.putdata([i * 1000 for i in range(16)])
    g = load_image(_png(deep), 4, channels=1)
    assert g.shape == (1, 4, 4) and g.max() == 1.0 and g.min() == 0.0
    url = "data:image/png;base64," + base64.b64encode(_png(rgb)).decode()
    assert torch.equal(load_image(url, 4), load_image(_png(rgb), 4))


def test_bad_images_refused(tmp_path):
    with pytest.raises(UserError, match="not a readable image"):
        load_image(b"this is text, not a PNG", 8)
    with pytest.raises(UserError, match="base64"):
        load_image("data:image/png;base64,@@@", 8)
    with pytest.raises(UserError, match="file not found"):
        load_image(str(tmp_path / "missing.png"), 8)
    big = _png(Image.new("L", (5000, 5000)))  # 25M pixels, tiny file: refused before decoding
    with pytest.raises(UserError, match="pixels") as e:
        load_image(big, 8)
    assert "5000x5000" in str(e.value) and "downscale it first (the model sees it at 8x8)" in str(e.value)


def test_bad_image_messages_name_the_image_and_say_what_to_do(tmp_path):
    (tmp_path / "page.png").write_text("<html>a web page saved as .png</html>")
    with pytest.raises(UserError) as e:
        load_image(str(tmp_path / "page.png"), 8)
    msg = str(e.value)
    assert str(tmp_path / "page.png") in msg and "not a readable image" in msg and "b'<html>a web page'" in msg
    assert "0x" not in msg and "BytesIO" not in msg  # no object reprs in a user's message
    url = "data:image/png;base64," + base64.b64encode(b"GIF89a-truncated").decode()
    with pytest.raises(UserError, match="the data URL's image is not a readable image"):
        load_image(url, 8)
    buf = io.BytesIO()
    Image.new("LAB", (4, 4)).save(buf, format="TIFF")
    with pytest.raises(UserError, match="image mode 'LAB'.*save it as an RGB"):
        load_image(buf.getvalue(), 4)


def test_big_endian_16_bit_grey_is_converted():
    buf = io.BytesIO()
    deep = Image.new("I;16B", (4, 4))
    deep.putdata([i * 1000 for i in range(16)])
    deep.save(buf, format="TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16B"
    g = load_image(buf.getvalue(), 4, channels=1)
    assert g.shape == (1, 4, 4) and g.max() == 1.0 and g.min() == 0.0


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llmlab.cli", "mm", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # each CLI start imports torch: ~5 s, far more on a loaded machine
def test_cli_mismatched_dims_one_line_exit_2(tmp_path):
    r = _cli("train", "dataset=easy_vqa", cwd=tmp_path)  # default vision is digits' 1-channel 8x8
    assert r.returncode == 2 and "in_chans=1 but easy_vqa images have 3" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _cli("train", "vision.image_size=10", cwd=tmp_path)
    assert r.returncode == 2 and "vision.image_size=10 but digits images are 8x8" in r.stderr
    r = _cli("chat", f"run_dir={tmp_path}", "image=x.png", cwd=tmp_path)  # the image is checked first
    assert r.returncode == 2 and "x.png" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    from PIL import Image
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "x.png")
    r = _cli("chat", f"run_dir={tmp_path}", "image=x.png", cwd=tmp_path)  # a readable image, no model there
    assert r.returncode == 2 and "config.json" in r.stderr


@pytest.mark.slow
def test_cli_train_then_eval(tmp_path):
    out = tmp_path / "run"
    r = _cli("train", "max_steps=3", "train_limit=64", "per_device_train_batch_size=16", f"output_dir={out}",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    trained = json.loads(r.stdout.strip().splitlines()[-1])
    r = _cli("eval", f"run_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["zero_shot_acc"] == trained["zero_shot_acc"]  # the saved model reloads exactly
    assert set(again) >= {"i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5"}
    r = _cli("eval", f"run_dir={out}", "choose_prompts=true", cwd=tmp_path)  # no validation images to choose on
    assert r.returncode == 2 and "validation=N" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    val = tmp_path / "val"
    r = _cli("train", "max_steps=3", "validation=100", "per_device_train_batch_size=16", f"output_dir={val}",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("eval", f"run_dir={val}", "choose_prompts=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert 1 <= len(got["chosen_templates"]) <= 4 and 0 <= got["test_zero_shot_acc_chosen"] <= 1
    assert 0 <= got["test_zero_shot_acc_all"] <= 1
