"""Model sizing from one dial, `depth`, and named presets.

depth -> width: hidden_size = 64 * depth, head_dim 64 (so depth heads), SwiGLU 8/3 width, as in
nanochat's single-dial design (aspect ratio 64). From the parameter count N:
- token budget D = tokens_per_param * N, ~20 by default (Chinchilla, Hoffmann et al. 2022);
- training compute C = 6 N D (Kaplan et al. 2020);
- batch size (tokens) and peak learning rate from DeepSeek LLM's fits (Bi et al. 2024, sec. 3.1):
  B_opt = 0.2920 * C^0.3271 tokens,  eta_opt = 0.3118 * C^-0.1250.

Chinchilla's compute-optimal split (Approach 3 constants E=1.69, A=406.4, B=410.7, alpha=0.34,
beta=0.28) minimises L = E + A/N^alpha + B/D^beta subject to C = 6ND, giving
N_opt = G (C/6)^a, D_opt = (C/6)^b / G, with a = beta/(alpha+beta) ~ 0.45, b = alpha/(alpha+beta) ~ 0.55
and G = (alpha A / (beta B))^(1/(alpha+beta)). The source notes (003, after the RUC survey) write
a = alpha/(alpha+beta) and b = beta/(alpha+beta): the exponents swapped. We use the derived form.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmlab.errors import UserError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import num_params

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_optimal(compute: float) -> tuple[float, float]:
    """Compute-optimal (N params, D tokens) for `compute` FLOPs with C = 6 N D."""
    A, B, al, be = CHINCHILLA["A"], CHINCHILLA["B"], CHINCHILLA["alpha"], CHINCHILLA["beta"]
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    a, b = be / (al + be), al / (al + be)
    return G * (compute / 6) ** a, (compute / 6) ** b / G


def chinchilla_loss(n_params: float, n_tokens: float) -> float:
    c = CHINCHILLA
    return c["E"] + c["A"] / n_params ** c["alpha"] + c["B"] / n_tokens ** c["beta"]


def deepseek_batch_lr(compute: float) -> tuple[float, float]:
    """(batch size in tokens, peak lr) from DeepSeek LLM's power-law fits against compute."""
    return 0.2920 * compute ** 0.3271, 0.3118 * compute ** -0.1250


@dataclass
class Sizing:
    model: ModelConfig
    params: int
    tokens: int  # training token budget
    compute: float  # 6 N D
    learning_rate: float
    batch_tokens: int  # tokens per optimizer step (all ranks, all micro-batches)
    max_steps: int

    def summary(self) -> str:
        m = self.model
        return (f"depth {m.num_hidden_layers}, width {m.hidden_size}, heads {m.num_attention_heads}, "
                f"{self.params / 1e6:.2f}M params, {self.tokens / 1e6:.1f}M tokens, "
                f"{self.compute:.2e} FLOPs, lr {self.learning_rate:.2e}, "
                f"{self.batch_tokens} tokens/step, {self.max_steps} steps")


def size_model(depth: int, vocab_size: int, seq_len: int, tokens_per_param: float = 20.0,
               micro_batch_tokens: int | None = None, **model_kw) -> Sizing:
    """Derive width, heads, lr, batch and token budget from `depth`.

    The batch is rounded to a whole number of `micro_batch_tokens` (per-device batch x seq_len x
    world size) so it maps onto gradient accumulation; at least one micro-batch.
    """
    if depth < 1:
        raise UserError(f"depth must be >= 1, got {depth}")
    if tokens_per_param <= 0:
        raise UserError(f"tokens_per_param must be > 0, got {tokens_per_param}")
    width = 64 * depth
    cfg = ModelConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=depth,
                      num_attention_heads=depth, max_position_embeddings=seq_len, **model_kw)
    n = num_params(cfg)
    tokens = int(tokens_per_param * n)
    compute = 6.0 * n * tokens
    batch, lr = deepseek_batch_lr(compute)
    unit = micro_batch_tokens or seq_len
    batch_tokens = max(1, round(batch / unit)) * unit
    return Sizing(cfg, n, tokens, compute, lr, batch_tokens, max(1, tokens // batch_tokens))


# Named presets: depth, window, per-device micro-batch and token budget; any TrainConfig key given
# here (learning_rate, max_steps, gradient_accumulation_steps) replaces the derived value.
# `cpu` is the 2-core speedrun: time-bound (~10 min of training), far below Chinchilla, and at
# that scale many small steps beat the fitted compute-optimal batch (2,048 tokens x 1,000 steps:
# val 2.37 bits/byte; 12,288 x 200 in the same time: 3.02; docs/LOG.md). A 256-token window
# leaves room for a chat turn after SFT. `gpu` is sized for one H100 in ~30 min at bf16.
PRESETS: dict[str, dict] = {
    "tiny": {"depth": 2, "max_length": 64, "per_device_train_batch_size": 8, "tokens_per_param": 20.0},
    "cpu": {"depth": 4, "max_length": 256, "per_device_train_batch_size": 8, "tokens_per_param": 2.0,
            "gradient_accumulation_steps": 1, "max_steps": 1000, "learning_rate": 3e-3},
    "small": {"depth": 8, "max_length": 512, "per_device_train_batch_size": 16, "tokens_per_param": 20.0},
    "gpu": {"depth": 10, "max_length": 1024, "per_device_train_batch_size": 32, "tokens_per_param": 20.0},
}
_DERIVED = ("learning_rate", "max_steps", "gradient_accumulation_steps")


def preset(name: str, vocab_size: int, world_size: int = 1) -> tuple[Sizing, dict]:
    """Sizing plus the TrainConfig overrides (learning_rate, max_steps, batch, accumulation) for `name`."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
    p = PRESETS[name]
    micro = p["per_device_train_batch_size"] * p["max_length"] * world_size
    s = size_model(p["depth"], vocab_size, p["max_length"], p["tokens_per_param"], micro_batch_tokens=micro)
    overrides = {"learning_rate": s.learning_rate, "max_steps": s.max_steps, "max_length": p["max_length"],
                 "per_device_train_batch_size": p["per_device_train_batch_size"],
                 "gradient_accumulation_steps": s.batch_tokens // micro}
    overrides.update({k: p[k] for k in _DERIVED if k in p})
    overrides["warmup_steps"] = max(1, overrides["max_steps"] // 50)
    return s, overrides
