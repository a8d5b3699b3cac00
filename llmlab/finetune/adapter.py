"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

    h <- h + W_up f(W_down h),   W_down: d -> r,  W_up: r -> d,  r << d

Houlsby et al. insert one adapter after the attention output projection and one after the
feed-forward output, *before* each residual add: we wrap the modules named by the pattern
(default o_proj and down_proj) so their output h becomes h + adapter(h). W_up starts at zero,
so every adapter is exactly the identity at initialisation and the model equals the base.
Parameters per adapter: 2 d r + r + d (two biased Linears).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError
from llmlab.finetune import io
from llmlab.finetune.targets import check_plain, find_targets, freeze, replace_module

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class AdapterConfig:
    r: int = field(default=16, metadata={"help": "bottleneck width"})
    non_linearity: str = field(default="relu", metadata={"help": "relu | gelu | silu | tanh"})
    target_modules: list | str = field(default_factory=lambda: ["o_proj", "down_proj"],
                                       metadata={"help": "modules whose output gets an adapter"})

    def __post_init__(self):
        if self.r < 1:
            raise UserError(f"r must be >= 1, got {self.r}")
        if self.non_linearity not in ACTIVATIONS:
            raise UserError(f"non_linearity must be one of {', '.join(ACTIVATIONS)}, got {self.non_linearity!r}")


class AdapterLinear(nn.Linear):
    """A frozen Linear followed by a residual bottleneck adapter on its output."""

    def __init__(self, base: nn.Linear, cfg: AdapterConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # same Parameters: base keys unchanged
        d, dev = base.out_features, base.weight.device
        self.adapter_down = nn.Linear(d, cfg.r, device=dev)
        self.adapter_act = ACTIVATIONS[cfg.non_linearity]()
        self.adapter_up = nn.Linear(cfg.r, d, device=dev)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight, self.bias)
        return h + self.adapter_up(self.adapter_act(self.adapter_down(h)))


def apply_adapters(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    names = find_targets(model, cfg.target_modules, nn.Linear)
    check_plain(model, names)
    freeze(model)
    for n in names:
        replace_module(model, n, AdapterLinear(model.get_submodule(n), cfg))
    return names


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if ".adapter_" in n}


def _to_json(cfg: AdapterConfig) -> dict:
    return {"llmlab_method": "adapter", "r": cfg.r, "non_linearity": cfg.non_linearity,
            "target_modules": cfg.target_modules}


def save_adapters(model: nn.Module, path: str | Path, cfg: AdapterConfig) -> Path:
    return io.save_adapter(path, "adapter", _to_json(cfg), adapter_state_dict(model), model)


def load_adapters(model: nn.Module, path: str | Path, allow_other_base: bool = False) -> AdapterConfig:
    config, tensors, meta = io.read_adapter(path)
    io.check_method(meta, "adapter", path)
    io.check_base(meta, model, path, allow_other_base)
    try:
        cfg = AdapterConfig(r=int(config["r"]), non_linearity=config["non_linearity"],
                            target_modules=config["target_modules"])
    except KeyError as e:
        raise UserError(f"{path}/{io.CONFIG}: missing key {e}") from None
    apply_adapters(model, cfg)
    io.load_strict_into(adapter_state_dict(model), tensors, path)
    return cfg
