"""Training tricks of the notes (d001 sec. 2.12, d003 sec. 2.12/2.15), each a small function.

- Batch-size ramp-up (GPT-3, Brown et al. 2020 App. B: 32K -> 3.2M tokens over the first 4-12B
  tokens): the global batch grows linearly from `start` to the configured batch over `ramp_steps`
  optimizer steps; here in whole micro-batches (gradient-accumulation steps), so the micro-batch
  shape, and with it memory, never changes.
- Early stopping: stop when the validation loss has not improved by more than `threshold` for
  `patience` evaluations in a row (HF EarlyStoppingCallback's semantics); the best step is kept.
- Init schemes: Xavier/Glorot (2010) uniform U(+-sqrt(6/(fan_in+fan_out))) or normal
  N(0, 2/(fan_in+fan_out)); T5 (Raffel et al. 2020, Mesh-TF): N(0, 1/fan_in) for every matrix
  (q additionally / head_dim, as T5 folds the 1/sqrt(d_k) attention scale into W_q), embeddings
  N(0, 1); small init (Nguyen & Salazar 2019, "Transformers without tears"): N(0, 2/(5 d)).
  GPT-2's N(0, 0.02) with residual projections / sqrt(2 N) is the model's own default.
- Embedding-gradient shrink (GLM-130B, Zeng et al. 2022 sec. 3.3): the embedding output becomes
  e alpha + e.detach() (1 - alpha): the forward value is unchanged, its gradient is alpha times.
- Selective activation recomputation (Korthikanti et al. 2022): only the attention sub-layer (the
  part whose saved activations grow with T^2 when scores are materialised, and cheap to recompute)
  is recomputed in backward; full recomputation (`gradient_checkpointing`) keeps only block inputs.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def rampup_accumulation(step: int, full: int, start: int, ramp_steps: int) -> int:
    """Micro-batches (gradient-accumulation steps) at optimizer step `step` (0-based): linear from
    `start` to `full` over `ramp_steps` steps, then `full`. start=0 or ramp_steps=0: no ramp."""
    if not start or not ramp_steps or step >= ramp_steps or start >= full:
        return full
    return max(1, start + (full - start) * step // ramp_steps)


class EarlyStopping:
    """`update(step, val_loss)` -> True once `patience` evaluations in a row brought no improvement
    larger than `threshold` over the best so far. best / best_step say which evaluation to keep."""

    def __init__(self, patience: int, threshold: float = 0.0):
        self.patience, self.threshold = patience, threshold
        self.best, self.best_step, self.bad = math.inf, -1, 0

    def update(self, step: int, val_loss: float) -> bool:
        if val_loss < self.best - self.threshold:
            self.best, self.best_step, self.bad = val_loss, step, 0
        else:
            self.bad += 1
        return self.patience > 0 and self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_step, self.bad = float(d["best"]), int(d["best_step"]), int(d["bad"])


INIT_SCHEMES = ("default", "xavier_uniform", "xavier_normal", "t5", "small")


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str, seed: int | None = None) -> None:
    """Re-initialise every Linear/Embedding weight by `scheme` (biases to 0; norms untouched)."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {INIT_SCHEMES}, got {scheme!r}")
    if scheme == "default":
        return
    if seed is not None:
        torch.manual_seed(seed)
    cfg = getattr(model, "config", None)
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // cfg.num_attention_heads if cfg else 1)
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            d = m.weight.shape[1]
            std = {"xavier_uniform": None, "xavier_normal": None, "t5": 1.0, "small": math.sqrt(2 / (5 * d))}[scheme]
            if std is None:
                _xavier(m.weight, scheme)
            else:
                nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.Linear):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if name.endswith("lm_head") and getattr(cfg, "tie_word_embeddings", False):
                continue  # shared with the embedding
            fan_in = m.weight.shape[1]
            if scheme.startswith("xavier"):
                _xavier(m.weight, scheme)
            elif scheme == "t5":
                scale = head_dim if name.endswith("q_proj") else 1
                nn.init.normal_(m.weight, 0.0, (fan_in * scale) ** -0.5)
            else:  # small: sqrt(2 / (5 d)) with d the model width (= fan_in of most matrices)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2 / (5 * (cfg.hidden_size if cfg else fan_in))))


def _xavier(w: torch.Tensor, scheme: str) -> None:
    (nn.init.xavier_uniform_ if scheme == "xavier_uniform" else nn.init.xavier_normal_)(w)


def shrink_embedding_grad(model: nn.Module, alpha: float):
    """GLM's shrink on every nn.Embedding output; returns the hook handles (remove() to undo)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"embedding_grad_shrink must be in (0, 1], got {alpha}")

    def hook(_mod, _inp, out):
        return out * alpha + out.detach() * (1.0 - alpha)

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Embedding)]


def selective_recompute(model: nn.Module, targets: tuple[str, ...] = ("self_attn",)) -> int:
    """Recompute in backward the activations of every submodule whose attribute name is in
    `targets` (training, grad enabled, no KV cache); returns how many. The module's own forward is
    wrapped in place, so parameter names and checkpoints stay as they are."""
    n = 0
    for parent in model.modules():
        for attr, child in parent.named_children():
            if attr in targets and "_plain_forward" not in child.__dict__:
                child._plain_forward = child.forward
                child.forward = _recomputed(child)
                n += 1
    if n == 0:
        raise ValueError(f"selective_recompute: no submodule named any of {targets}")
    return n


def _recomputed(mod: nn.Module):
    def forward(*args, **kw):
        stateful = any(a is not None and hasattr(a, "advance") for a in list(args) + list(kw.values()))
        if mod.training and torch.is_grad_enabled() and not stateful:
            return checkpoint(mod._plain_forward, *args, use_reentrant=False, **kw)
        return mod._plain_forward(*args, **kw)
    return forward


def saved_activation_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while `fn()` runs (a measurement, not an
    estimate: saved_tensors_hooks sees every saved tensor; parameters and repeated storages are not
    counted; what a non-reentrant checkpoint keeps, its inputs, is held outside these hooks)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if not (t.requires_grad and t.grad_fn is None) and key not in seen:  # leaf = a parameter
            seen.add(key)
            total += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def apply(model: nn.Module, cfg) -> None:
    """The model-side tricks a TrainConfig asks for: init scheme (seeded), embedding-grad shrink,
    selective recomputation (attention sub-layers)."""
    if cfg.weight_init != "default":
        init_weights(model, cfg.weight_init, seed=cfg.seed)
    if cfg.embedding_grad_shrink < 1.0:
        shrink_embedding_grad(model, cfg.embedding_grad_shrink)
    if cfg.selective_recompute:
        selective_recompute(model)
