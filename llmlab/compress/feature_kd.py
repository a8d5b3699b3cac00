"""Feature-based distillation: the student imitates the teacher's intermediate layers, not only its
output distribution (digest-001 §2.21).

Hidden states (FitNets, Romero et al. 2015, arXiv:1412.6550; TinyBERT, Jiao et al. 2020,
arXiv:1909.10351): student block i is paired with teacher block m(i) = round((i + 1) * L_t / L_s) - 1
(uniform mapping, the last blocks paired), and a learned projection W (d_s -> d_t) maps the
student's hidden state onto the teacher's:
    L_hid = mean ||W h_s - h_t||^2 / mean ||h_t||^2
(relative MSE: LLM residual streams carry a few huge "massive activation" channels, so the plain
MSE's scale would change from layer to layer and model to model).

Attention transfer (Zagoruyko & Komodakis 2017, arXiv:1612.03928; for Transformers MiniLM, Wang et
al. 2020, arXiv:2002.10957: match the self-attention distributions): every query row of a causal
attention map is a distribution over the keys, so the student matches the teacher's row by row,
    L_att = mean over rows of KL(A_t[row] || A_s[row]),
with the maps averaged over heads (teacher and student have different head counts).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from llmlab.model.rope import apply_rope


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher block for each student block: uniform, the last with the last."""
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def hidden_kd_loss(h_s: torch.Tensor, h_t: torch.Tensor, proj: nn.Module | None = None) -> torch.Tensor:
    """mean ||proj(h_s) - h_t||^2 / mean ||h_t||^2 (0 when they agree; 1 for proj(h_s) = 0)."""
    h = proj(h_s) if proj is not None else h_s
    h_t = h_t.float()
    return (h.float() - h_t).pow(2).mean() / h_t.pow(2).mean().clamp_min(1e-12)


def attention_probs(attn, x: torch.Tensor, rope) -> torch.Tensor:
    """The causal attention distributions of an `Attention` module on its input x (B, T, d),
    averaged over heads: (B, T, T), each row sums to 1 (recomputed from q_proj/k_proj + RoPE,
    so the fast SDPA path keeps running in the model itself)."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, attn.n_kv, attn.head_dim).transpose(1, 2)
    if attn.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if attn.n_kv != attn.n_heads:
        k = k.repeat_interleave(attn.n_heads // attn.n_kv, dim=1)
    s = (q @ k.transpose(-1, -2)).float() * attn.scale
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), -math.inf)
    return torch.softmax(s, dim=-1).mean(1)


def attention_kd_loss(a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Mean over query rows of KL(a_t || a_s); maps (B, T, T) of row distributions (causal zeros
    contribute nothing)."""
    a_t = a_t.float()
    log_s = a_s.float().clamp_min(1e-12).log()
    log_t = a_t.clamp_min(1e-12).log()
    return (a_t * (log_t - log_s)).sum(-1).mean()


@contextlib.contextmanager
def capture(model, layers: list[int], attention: bool = False):
    """Record the outputs of the given blocks (`out[i]`, (B, T, d)) and, with attention=True, their
    head-averaged attention maps (`att[i]`, (B, T, T)) during the forwards inside the block."""
    out: dict[int, torch.Tensor] = {}
    att: dict[int, torch.Tensor] = {}
    hooks = []
    for i in layers:
        blk = model.model.layers[i]
        hooks.append(blk.register_forward_hook(lambda m, a, y, i=i: out.__setitem__(i, y)))
        if attention:
            hooks.append(blk.self_attn.register_forward_pre_hook(
                lambda m, a, i=i: att.__setitem__(i, attention_probs(m, a[0], a[1]))))
    try:
        yield out, att
    finally:
        for h in hooks:
            h.remove()


class FeatureKD(nn.Module):
    """The student-side pieces of feature KD: one projection d_s -> d_t per student block (trained
    with the student) and the loss against cached teacher features."""

    def __init__(self, n_student: int, n_teacher: int, d_student: int, d_teacher: int):
        super().__init__()
        self.teacher_layers = layer_map(n_student, n_teacher)
        self.proj = nn.ModuleList(nn.Linear(d_student, d_teacher, bias=False) for _ in range(n_student))

    def loss(self, s_hidden: dict, s_att: dict, t_hidden: list | None, t_att: list | None,
             hidden_weight: float, attention_weight: float) -> torch.Tensor:
        """hidden_weight * mean_i L_hid(i) + attention_weight * L_att(last block); t_hidden[i] is
        the teacher's output of block teacher_layers[i], t_att the teacher's last-block map."""
        loss = torch.zeros(())
        n = len(self.proj)
        if hidden_weight:
            loss = loss + hidden_weight * sum(hidden_kd_loss(s_hidden[i], t_hidden[i], self.proj[i])
                                              for i in range(n)) / n
        if attention_weight:
            loss = loss + attention_weight * attention_kd_loss(s_att[n - 1], t_att)
        return loss

