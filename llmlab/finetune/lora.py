"""LoRA: low-rank adaptation of frozen Linear layers (Hu et al. 2021, arXiv:2106.09685).

    h = W0 x + (alpha / r) * B A x,     W0 (d_out x d_in) frozen,  A (r x d_in),  B (d_out x r)

B starts at zero, so BA = 0 and the adapted model starts exactly equal to the base; A starts
random (the notes and the paper say Gaussian; we use N(0, 1/r), PEFT's "gaussian" option;
"kaiming" gives loralib's/PEFT's default kaiming-uniform). Only A and B train. `merge` folds
(alpha/r) B A into W0 (no extra latency at inference), `unmerge` subtracts it again.
rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead.

LoRALinear subclasses nn.Linear and keeps the base Parameters under their own names, so the
model's base state_dict keys do not change and the adapter keys are `<name>.lora_A.weight`, as
in PEFT (which adds `base_model.model.` in front on disk, see peft_format.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError
from llmlab.finetune.targets import check_plain, find_targets, freeze, replace_module


@dataclass
class LoraConfig:
    r: int = field(default=8, metadata={"help": "rank of A and B"})
    lora_alpha: float = field(default=16.0, metadata={"help": "scale: delta W = (lora_alpha / r) B A"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input"})
    target_modules: list | str = field(default_factory=lambda: ["q_proj", "v_proj"],
                                       metadata={"help": "module-name suffixes, or one full-match regex"})
    init_lora_weights: str = field(default="gaussian", metadata={"help": "A init: gaussian | kaiming (B is zero)"})
    use_rslora: bool = field(default=False, metadata={"help": "scale alpha/sqrt(r) (rsLoRA)"})

    def __post_init__(self):
        if self.r < 1:
            raise UserError(f"r must be >= 1, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UserError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.init_lora_weights not in ("gaussian", "kaiming"):
            raise UserError(f"init_lora_weights must be gaussian or kaiming, got {self.init_lora_weights!r}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoRAMixin:
    """The trainable low-rank branch; shared by LoRALinear and QLoRALinear."""

    def _init_lora(self, d_in: int, d_out: int, cfg: LoraConfig, device, dtype=torch.float32) -> None:
        self.r, self.scaling = cfg.r, cfg.scaling
        self.lora_A = nn.Linear(d_in, cfg.r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(cfg.r, d_out, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        with torch.no_grad():
            if cfg.init_lora_weights == "gaussian":
                nn.init.normal_(self.lora_A.weight, std=1.0 / cfg.r)
            else:
                nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    def lora_delta(self) -> torch.Tensor:
        """(alpha/r) B A, the dense weight update (d_out x d_in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def lora_branch(self, x: torch.Tensor) -> torch.Tensor:
        # two thin matmuls (x A^T) B^T: never materialise the d_out x d_in update during training
        return self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))) * self.scaling


class LoRALinear(nn.Linear, LoRAMixin):
    def __init__(self, base: nn.Linear, cfg: LoraConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameter objects: no copy
        self._init_lora(base.in_features, base.out_features, cfg, base.weight.device)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + self.lora_branch(x).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.lora_delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.lora_delta().to(self.weight.dtype)
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear with the (merged) base weight, for merge-and-unload."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin


def _tied_weights(model: nn.Module) -> set[int]:
    """ids of Parameters reachable under more than one name (tied embeddings)."""
    count: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        count[id(p)] = count.get(id(p), 0) + 1
    return {k for k, v in count.items() if v > 1}


def apply_lora(model: nn.Module, cfg: LoraConfig, layer_cls=None) -> list[str]:
    """Freeze `model` and replace every matched nn.Linear by a LoRA layer; returns the names."""
    layer_cls = layer_cls or LoRALinear
    names = find_targets(model, cfg.target_modules, nn.Linear)
    check_plain(model, names)
    tied = _tied_weights(model)
    for n in names:
        if id(model.get_submodule(n).weight) in tied:
            raise UserError(f"target_modules: {n}.weight is tied to another weight (tie_word_embeddings); "
                            "merging LoRA into it would also change the tied one: leave it out")
    freeze(model)
    for n in names:
        replace_module(model, n, layer_cls(model.get_submodule(n), cfg))
    return names


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRAMixin)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter's tensors: `<module>.lora_A.weight` and `<module>.lora_B.weight`."""
    out = {}
    for n, m in lora_layers(model).items():
        out[f"{n}.lora_A.weight"] = m.lora_A.weight.detach()
        out[f"{n}.lora_B.weight"] = m.lora_B.weight.detach()
    return out


def merge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and put plain nn.Linear modules back."""
    for n, m in lora_layers(model).items():
        if not isinstance(m, LoRALinear):
            raise UserError(f"{n}: cannot merge into a 4-bit base (QLoRA); dequantize the base first")
        m.merge()
        replace_module(model, n, m.to_linear())
    return model
