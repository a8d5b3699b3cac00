"""A tiny LLaVA-style run dir (what `llmlab mm llava` writes): a random 8x8 ViT "CLIP" run, a tiny
random LM with SmolLM2's tokenizer, a random projector. Fast chat / server tests with images."""
from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict
from pathlib import Path

import torch



def _save_lm(path: Path) -> Path:
    """A tiny random LM with untied embeddings (tied, a random model echoes its last prompt token, a
    newline, so every answer would strip to ''), SmolLM2's tokenizer and chat template."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.load import packaged_path
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer.bpe import load_tokenizer
    tok = load_tokenizer(packaged_path("smollm2"))
    torch.manual_seed(0)
    save_hf_dir(Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                        tie_word_embeddings=False)).eval(), path)
    tok.save(path / "_tok")  # (saving writes a whole dir)
    for f in (path / "_tok").iterdir():
        f.rename(path / f.name)
    (path / "_tok").rmdir()
    return path


def save_tiny_llava(root: Path) -> Path:
    from llmlab.checkpoint import save_tensors
    from llmlab.multimodal.llava import Projector
    from llmlab.multimodal.llava_train import LlavaConfig
    from llmlab.multimodal.runs import save_contrastive
    from llmlab.multimodal.train import ContrastiveConfig, build_model
    from llmlab.multimodal.vit import ViTConfig
    root = Path(root)
    vcfg = ContrastiveConfig(dataset="easy_vqa", vision=ViTConfig(image_size=8, patch_size=4, in_chans=3,
                                                                  embed_dim=16, depth=1, num_heads=2))
    save_contrastive(build_model(vcfg), vcfg, {}, str(root / "clip"))
    lm = _save_lm(root / "lm")
    run = root / "llava"
    run.mkdir()
    torch.manual_seed(1)
    proj = Projector(16, 64)
    with torch.no_grad():  # loud image tokens: different pictures get different answers
        proj[2].weight.mul_(30)
    save_tensors(run / "projector.safetensors", proj.state_dict())
    cfg = LlavaConfig(lm=str(lm), vision_run=str(root / "clip"), output_dir=str(run), lora_r=0)
    (run / "config.json").write_text(json.dumps({"kind": "llava", **asdict(cfg)}))
    return run


def png(color=(255, 0, 0), size=(12, 12)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()
