"""The one model loader: a reference (a GGUF file, an HF-style dir, or a packaged name) -> our
Transformer. With its tokenizer: `llmlab.infer.model_and_tokenizer` (downstream of both stages)."""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.data.packages import PACKAGED, packaged_path  # noqa: F401  (packaged_path is re-exported)
from llmlab.errors import UserError


def resolve_model_path(ref: str) -> Path:
    if ref.lower() in PACKAGED:
        return packaged_path(ref)
    p = Path(ref)
    if not p.exists():
        raise UserError(f"model not found: '{ref}' is neither a file, a directory, nor one of "
                        f"the packaged models ({', '.join(sorted(PACKAGED))})")
    return p


def load_model(ref: str, dtype: torch.dtype = torch.float32):
    """-> (model, path). `ref`: 'smollm2', a .gguf file, or an HF-style directory."""
    path = resolve_model_path(ref)
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{path}: expected a .gguf file or a model directory")
        from llmlab.model.gguf_io import load_gguf
        return load_gguf(path, dtype), path
    from llmlab.checkpoint import read_json
    meta = read_json(path / "config.json") if (path / "config.json").is_file() else None
    if isinstance(meta, dict) and meta.get("model_type") == "t5":  # encoder-decoder (llmlab/model/t5.py)
        from llmlab.model.t5 import load_t5_dir
        return load_t5_dir(path, dtype), path
    from llmlab.model.hf import load_hf_dir
    return load_hf_dir(path, dtype), path
