"""Memory checks for training: a rough peak estimate before the first step, and the one clear
error for a batch that does not fit (instead of a bare allocator message)."""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.errors import UserError
from llmlab.train.config import TrainConfig


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e) \
        or "out of memory" in str(e).lower()


def oom_error(cfg: TrainConfig) -> UserError:
    return UserError(f"a batch of per_device_train_batch_size={cfg.per_device_train_batch_size} x "
                     f"max_length={cfg.max_length} does not fit in memory: lower per_device_train_batch_size "
                     "(raise gradient_accumulation_steps to keep the global batch), lower max_length, "
                     "or set gradient_checkpointing=true")


def available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_memory(model, cfg: TrainConfig, dtype_bytes: int = 4) -> int:
    """Rough peak bytes: weights + grads + 2 Adam moments, plus activations kept for backward.

    Per token and layer a pre-norm SwiGLU block keeps ~ 10 d + 3 f values (inputs of each matmul,
    norms, SiLU) and the attention (H x T scores when SDPA falls back to the math kernel); the
    fused loss keeps d per token. Checkpointing keeps only the block inputs.
    """
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    bt = cfg.per_device_train_batch_size * cfg.max_length
    per_layer = 10 * c.hidden_size + 3 * c.intermediate_size + c.num_attention_heads * cfg.max_length
    layers = c.hidden_size * c.num_hidden_layers + per_layer if cfg.gradient_checkpointing \
        else per_layer * c.num_hidden_layers
    return 16 * n + dtype_bytes * bt * (layers + 2 * c.hidden_size)
