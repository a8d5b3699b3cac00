"""Activation memory of a GPT layer kept for backward (Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models", sec. 4, eq. 1-5).

Per layer, 16-bit activations, s sequence, b micro-batch, h hidden, a heads, t tensor-parallel size:

    no parallelism                 s b h (34 + 5 a s / h)
    tensor parallel                s b h (10 + 24/t + 5 a s / (h t))
    tensor + sequence parallel     s b h (34/t + 5 a s / (h t))
    + selective recomputation      s b h (34/t)           (attention core recomputed)
    full recomputation             2 s b h                 (only the layer input is kept)

The 34 are: LayerNorm inputs 4, QKV input 2, Q and K 4, V 2, attention-output projection input 2,
its dropout mask 1, MLP input 2, GELU input 8 and output 8, MLP dropout mask 1; the 5as/h are the
softmax output 2, its dropout mask 1 and the dropout output 2 (per a s^2 b). The formula assumes
GPT's block (LayerNorm, 4h GELU MLP, dropout) and 1-byte dropout masks; PyTorch's eager CPU
dropout keeps its mask in the activation dtype (2 bytes), so `mask_bytes` makes the three masks
explicit: s b h (32 + 2m) + a s^2 b (4 + m) without parallelism (m = 1 gives the paper's 34 and 5).
Tests measure it on exactly that block.
"""
from __future__ import annotations


def layer_activation_bytes(seq: int, batch: int, hidden: int, heads: int, tp: int = 1,
                           sequence_parallel: bool = False, recompute: str = "none",
                           mask_bytes: float = 1.0) -> float:
    """Bytes kept for backward by one layer; recompute is 'none', 'selective' or 'full'."""
    s, b, h, a, t, m = seq, batch, hidden, heads, tp, mask_bytes
    if recompute == "full":
        return 2.0 * s * b * h / (t if sequence_parallel else 1)
    attn = 0.0 if recompute == "selective" else (4.0 + m) * a * s / (h * t)
    if recompute not in ("none", "selective"):
        raise ValueError(f"recompute must be none, selective or full, got {recompute!r}")
    if sequence_parallel:
        return s * b * h * ((32.0 + 2 * m) / t + attn)
    # replicated under TP: LayerNorm inputs 4, LayerNorm outputs 4, two dropout masks 2m
    return s * b * h * (8.0 + 2 * m + 24.0 / t + attn)
