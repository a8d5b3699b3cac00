"""Saving and loading trained multimodal runs: model.safetensors (strict), config.json, metrics.json."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from llmlab.checkpoint import atomic_dir, load_strict, load_tensors, read_json, save_tensors, write_json
from llmlab.config import from_dict
from llmlab.errors import UserError
from llmlab.multimodal.train import ContrastiveConfig


RUN_FILES = ("model.safetensors", "config.json", "metrics.json")  # what save_contrastive writes


def save_contrastive(model, cfg: ContrastiveConfig, metrics: dict, out_dir: str) -> None:
    with atomic_dir(out_dir) as d:
        save_tensors(d / "model.safetensors", model.state_dict())
        write_json(d / "config.json", {"kind": "contrastive", **asdict(cfg)})
        write_json(d / "metrics.json", metrics)


def load_contrastive(run_dir: str):
    from llmlab.multimodal.train import build_model
    meta = read_json(Path(run_dir) / "config.json")
    if meta.pop("kind", None) != "contrastive":
        raise UserError(f"{run_dir}: not a CLIP/SigLIP run (config.json has no kind=contrastive)")
    cfg = from_dict(ContrastiveConfig, meta)
    model = build_model(cfg)
    load_strict(model, load_tensors(Path(run_dir) / "model.safetensors"), str(run_dir))
    return model.eval(), cfg
