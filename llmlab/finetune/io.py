"""Save and load only an adapter's own tensors, with strict key and base-model checks.

Every method writes a directory with `adapter_config.json` and `adapter_model.safetensors`
(the layout HF PEFT uses). The safetensors metadata records which method wrote the file and a
fingerprint of the base model (architecture numbers and a hash of the first embedding rows), so
loading an adapter onto a different base is a clear error rather than silent garbage.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from llmlab.checkpoint import atomic_dir, check_state_dict, load_tensors, read_json, save_tensors, write_json
from llmlab.errors import UserError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ARCH_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "intermediate_size")


def base_fingerprint(model) -> dict:
    """Architecture numbers plus a sha256 of the first 8 embedding rows (cheap, weight-specific)."""
    cfg = getattr(model, "config", None)
    fp = {k: getattr(cfg, k) for k in ARCH_KEYS if cfg is not None and hasattr(cfg, k)}
    emb = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    if emb is None:
        emb = next(m.weight for n, m in model.named_modules() if n.endswith("embed_tokens"))
    rows = emb.detach()[:8].to(torch.float32).contiguous().cpu()
    fp["embed_sha256"] = hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]
    return fp


def save_adapter(path: str | Path, method: str, config: dict, tensors: dict[str, torch.Tensor], model) -> Path:
    path = Path(path)
    meta = {"format": "pt", "llmlab_method": method, "llmlab_base": json.dumps(base_fingerprint(model))}
    with atomic_dir(path) as tmp:
        write_json(tmp / CONFIG, config)
        save_tensors(tmp / WEIGHTS, {k: v.detach().contiguous() for k, v in tensors.items()}, metadata=meta)
    return path


def read_adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(config, tensors, safetensors metadata) of an adapter directory."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"adapter directory not found: {path}")
    config = read_json(path / CONFIG)
    tensors = load_tensors(path / WEIGHTS)
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        meta = f.metadata() or {}
    return config, tensors, meta


def check_method(meta: dict, method: str | tuple, path) -> None:
    got = meta.get("llmlab_method")
    methods = (method,) if isinstance(method, str) else method
    if got is not None and got not in methods:
        raise UserError(f"{path}: this is a '{got}' adapter, not {' / '.join(methods)}")


def check_base(meta: dict, model, path, allow_other_base: bool = False) -> None:
    """UserError when the adapter was saved from a different base model (when that is recorded)."""
    if "llmlab_base" not in meta or allow_other_base:
        return
    saved, now = json.loads(meta["llmlab_base"]), base_fingerprint(model)
    diff = [f"{k}: adapter {saved[k]} vs model {now.get(k)}" for k in saved if saved[k] != now.get(k)]
    if diff:
        raise UserError(f"{path}: adapter was trained on a different base model ({'; '.join(diff)}); "
                        "pass allow_other_base=True to load it anyway")


def load_strict_into(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], path) -> None:
    """Copy `tensors` into the live `expected` tensors after a strict key/shape check."""
    check_state_dict(expected, tensors, str(path))
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(tensors[k].to(t.dtype))
