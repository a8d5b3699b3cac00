"""Soft prompts at the input layer: prompt tuning and P-tuning v1.

Prompt tuning (Lester et al. 2021): n trainable "virtual token" embeddings are put in front of the
input embeddings; the whole model is frozen, only the (n x d) prompt trains. Initialising it from
real vocabulary embeddings (`init_token_ids`) works better than random (their Sec. 3.2).

P-tuning v1 (Liu et al. 2021, "GPT Understands, Too"): the virtual-token embeddings come out of a
trainable prompt encoder, a 2-layer bidirectional LSTM followed by an MLP (or an MLP alone),
which the authors found more stable than free embeddings; the virtual tokens may sit at any
position of the template (`position`). After training the encoder's output is folded into plain
embeddings (`fold`), so inference and the saved file hold only the n x d prompt.

How it is injected without touching llmlab.model: n placeholder ids are spliced into input_ids at
`position`, and a forward hook on `embed_tokens` replaces their embeddings by the soft prompt, so
lengths, positions, masks and the KV cache stay consistent. Returned logits drop the virtual
positions, so labels line up with the caller's input_ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError
from llmlab.finetune import io
from llmlab.finetune.prefix import reserve
from llmlab.finetune.targets import freeze


@dataclass
class PromptConfig:
    num_virtual_tokens: int = field(default=20, metadata={"help": "number of soft-prompt vectors"})
    encoder: str = field(default="none", metadata={"help": "none (prompt tuning) | lstm | mlp (P-tuning v1)"})
    encoder_hidden_size: int = field(default=128, metadata={"help": "P-tuning encoder width"})
    position: int = field(default=0, metadata={"help": "where the virtual tokens go (0 = prefix)"})

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise UserError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.encoder not in ("none", "lstm", "mlp"):
            raise UserError(f"encoder must be none, lstm or mlp, got {self.encoder!r}")
        if self.position < 0:
            raise UserError(f"position must be >= 0, got {self.position}")


class PromptEncoder(nn.Module):
    """P-tuning's reparameterisation: (n, d) -> (n, d) through a BiLSTM+MLP or an MLP."""

    def __init__(self, d: int, hidden: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.lstm = nn.LSTM(d, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, d))
        else:
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, d))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        if self.kind == "lstm":
            e = self.lstm(e.unsqueeze(0))[0].squeeze(0)
        return self.mlp(e)


class SoftPromptModel(nn.Module):
    """A frozen causal LM with trainable input-layer virtual tokens. Same forward as Transformer."""

    def __init__(self, base: nn.Module, cfg: PromptConfig, init_token_ids: list[int] | None = None):
        super().__init__()
        freeze(base)
        self.base, self.cfg, self.config = base, cfg, base.config
        emb = base.model.embed_tokens.weight
        n, d = cfg.num_virtual_tokens, emb.shape[1]
        if init_token_ids:  # Lester et al.: start from real vocabulary embeddings
            ids = torch.tensor([init_token_ids[i % len(init_token_ids)] for i in range(n)])
            init = emb.detach()[ids].clone()
        else:
            init = torch.randn(n, d, device=emb.device) * emb.detach().std()
        self.prompt_embeddings = nn.Parameter(init.float())
        self.prompt_encoder = PromptEncoder(d, cfg.encoder_hidden_size, cfg.encoder) if cfg.encoder != "none" else None
        self._pending: tuple[int, torch.Tensor] | None = None
        self._hook = base.model.embed_tokens.register_forward_hook(self._splice)

    def unwrap(self) -> nn.Module:
        """Remove the embedding hook and return the (still frozen) base model."""
        self._hook.remove()
        return self.base

    def prompt(self) -> torch.Tensor:
        e = self.prompt_embeddings
        return self.prompt_encoder(e) if self.prompt_encoder is not None else e

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the P-tuning encoder by its output (identical outputs, n x d parameters)."""
        if self.prompt_encoder is not None:
            self.prompt_embeddings = nn.Parameter(self.prompt().detach().clone())
            self.prompt_encoder = None

    def _splice(self, module, inputs, out):
        if self._pending is None:
            return out
        pos, p = self._pending
        n = p.shape[0]
        return torch.cat([out[:, :pos], p.to(out.dtype).expand(out.shape[0], -1, -1), out[:, pos + n:]], dim=1)

    def forward(self, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None,
                position_ids=None, last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        n = self.cfg.num_virtual_tokens
        if cache is not None and cache.length > 0:  # the prompt is already in the cache
            if attention_mask is not None and attention_mask.shape[1] == cache.length - n + input_ids.shape[1]:
                pos = getattr(cache, "prompt_pos", 0)  # a mask over real tokens only: add the prompt's
                attention_mask = torch.cat([attention_mask[:, :pos], attention_mask.new_ones(len(attention_mask), n),
                                            attention_mask[:, pos:]], dim=1)
            return self.base(input_ids, cache=cache, attention_mask=attention_mask, last_only=last_only,
                             return_hidden=return_hidden)
        if position_ids is not None:
            raise UserError("position_ids cannot be combined with a soft prompt (positions shift by n)")
        B, T = input_ids.shape
        pos = min(self.cfg.position, T)
        if cache is not None:
            reserve(cache, n)  # a generation loop sized the cache for the real prompt only
            cache.prompt_pos = pos
        holder = input_ids.new_zeros(B, n)
        ids = torch.cat([input_ids[:, :pos], holder, input_ids[:, pos:]], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask[:, :pos], attention_mask.new_ones(B, n),
                                        attention_mask[:, pos:]], dim=1)
        self._pending = (pos, self.prompt())
        try:
            out = self.base(ids, cache=cache, attention_mask=attention_mask, last_only=last_only,
                            return_hidden=return_hidden)
        finally:
            self._pending = None
        return out if last_only else torch.cat([out[:, :pos], out[:, pos + n:]], dim=1)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
        logits = self(input_ids, **kw)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)

    def save(self, path: str | Path) -> Path:
        """Save the folded n x d prompt only (the encoder is training-time reparameterisation)."""
        p = self.prompt().detach()
        cfg = {"llmlab_method": "prompt", "num_virtual_tokens": self.cfg.num_virtual_tokens,
               "position": self.cfg.position, "trained_with_encoder": self.cfg.encoder}
        return io.save_adapter(path, "prompt", cfg, {"prompt_embeddings": p}, self.base)

    @classmethod
    def load(cls, base: nn.Module, path: str | Path, allow_other_base: bool = False) -> "SoftPromptModel":
        config, tensors, meta = io.read_adapter(path)
        io.check_method(meta, "prompt", path)
        io.check_base(meta, base, path, allow_other_base)
        try:
            cfg = PromptConfig(num_virtual_tokens=int(config["num_virtual_tokens"]), position=int(config["position"]))
        except KeyError as e:
            raise UserError(f"{path}/{io.CONFIG}: missing key {e}") from None
        model = cls(base, cfg)
        io.load_strict_into({"prompt_embeddings": model.prompt_embeddings.data}, tensors, path)
        return model
