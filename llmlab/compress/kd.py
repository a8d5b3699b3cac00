"""Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531; Kim & Rush 2016, arXiv:1606.07947).

Logit KD: the student matches the teacher's softened distribution p_T = softmax(z_t / T):
    L_KD = T^2 * KL(p_T || q_T),  q_T = softmax(z_s / T)
averaged over predicted tokens. The T^2 keeps the gradient scale independent of T (the gradient
of the softened KL wrt z_s is (q_T - p_T) / T). The training loss mixes it with the usual
cross-entropy on the data:  L = alpha * L_KD + (1 - alpha) * CE(z_s, y).
Teacher and student must share the vocabulary (same tokenizer).

Sequence-level KD: the teacher generates sequences (greedy or sampled) for the prompts and the
student is trained on them with plain cross-entropy (`teacher_sequences`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.errors import UserError


def _softened_kl(s_logp: torch.Tensor, t_logits: torch.Tensor, temperature: float,
                 mask: torch.Tensor | None) -> torch.Tensor:
    """T^2 * mean over masked positions of sum_i p_i (log p_i - s_logp_i), p = softmax(t_logits / T)."""
    t = F.log_softmax(t_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s_logp)).sum(-1)
    return temperature ** 2 * (kl[mask] if mask is not None else kl).mean()


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the positions where mask is true."""
    _check_temperature(temperature)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise UserError(f"student and teacher vocabularies differ ({student_logits.shape[-1]} vs "
                        f"{teacher_logits.shape[-1]}): logit KD needs one tokenizer")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return _softened_kl(s, teacher_logits, temperature, mask)


def topk_kd_loss(student_logits: torch.Tensor, top_values: torch.Tensor, top_ids: torch.Tensor,
                 temperature: float = 2.0, mask: torch.Tensor | None = None,
                 teacher_lse: torch.Tensor | None = None) -> torch.Tensor:
    """KD against a cached top-k of the teacher's logits (values (..., k), vocabulary ids (..., k)),
    so the teacher's forward runs once and is stored (k values + ids per position).

    Without `teacher_lse`: p = softmax(top_values / T) renormalised over those k tokens,
    T^2 * sum_{i in top-k} p_i (log p_i - log q_T,i) with q_T the student's full softmax. This
    truncation is biased (Anshumann et al. 2025, arXiv:2503.16870): the target puts zero mass
    outside the top-k, so the student is pushed to starve every other token, and at T = 2 the top
    64 of SmolLM2 hold only a third of the softened mass.
    With `teacher_lse` = logsumexp(z_t / T) over the whole vocabulary (...,): the exact KL between
    the teacher and the student over k + 1 outcomes, the top-k tokens and one "tail" bucket with the
    remaining mass (1 - sum p_i for the teacher, 1 - sum q_i for the student); with k = V it is
    `kd_loss`."""
    _check_temperature(temperature)
    s_all = F.log_softmax(student_logits.float() / temperature, dim=-1)
    s = s_all.gather(-1, top_ids)
    if teacher_lse is None:
        return _softened_kl(s, top_values, temperature, mask)
    t = top_values.float() / temperature - teacher_lse.float().unsqueeze(-1)
    kl = (t.exp() * (t - s)).sum(-1)
    # tail masses, as logs: log(1 - sum exp(.)) computed stably, clamped away from log 0
    t_tail = torch.log1p(-t.logsumexp(-1).exp().clamp(max=1 - 1e-6))
    s_tail = torch.log1p(-s.logsumexp(-1).exp().clamp(max=1 - 1e-6))
    kl = kl + t_tail.exp() * (t_tail - s_tail)
    return temperature ** 2 * (kl[mask] if mask is not None else kl).mean()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """alpha * KD + (1 - alpha) * CE; logits already aligned with labels (B, T, V) / (B, T).
    `teacher_logits` is the full (B, T, V) tensor, a (values, ids) pair of its top-k, or a
    (values, ids, lse) triple with the teacher's full log-normaliser at this T (tail-aware top-k)."""
    mask = labels != ignore_index
    ce = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), labels.reshape(-1),
                         ignore_index=ignore_index)
    if alpha == 0:
        return ce
    if isinstance(teacher_logits, tuple):
        v, i, *lse = teacher_logits
        kd = topk_kd_loss(student_logits, v, i, temperature, mask, *lse)
    else:
        kd = kd_loss(student_logits, teacher_logits, temperature, mask)
    return alpha * kd + (1 - alpha) * ce


@torch.no_grad()
def teacher_sequences(teacher, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                      seed: int = 0) -> list[list[int]]:
    """Sequence-level KD data: prompt + the teacher's continuation, one list of ids per prompt."""
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    out = []
    for i, p in enumerate(prompts):
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i)
        out.append(list(p) + list(generate_ids(teacher, p, params)))
    return out
