"""One entry point per PEFT method: attach to a base, save, and load back by what the file says.

`attach(base, "lora", r=8, ...)` returns the model to train (the base itself, modified in place,
for lora/qlora/adapter; a wrapper for prefix/ptuning_v2/prompt/ptuning). `save_peft(model, path)`
writes only the method's tensors; `load_peft(base, path)` reads the method from the file
(llmlab metadata, or peft_type "LORA" for a peft-made adapter) and rebuilds the same model.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from llmlab.errors import UserError
from llmlab.finetune import io
from llmlab.finetune.adapter import AdapterConfig, apply_adapters, load_adapters, save_adapters
from llmlab.finetune.lora import LoraConfig, LoRALinear, apply_lora, lora_layers
from llmlab.finetune.peft_format import load_lora, save_lora
from llmlab.finetune.prefix import PrefixConfig, PrefixModel
from llmlab.finetune.prompt import PromptConfig, SoftPromptModel
from llmlab.finetune.qlora import QLoRALinear, apply_qlora

METHODS = ("lora", "qlora", "adapter", "prefix", "ptuning_v2", "prompt", "ptuning")
CONFIGS = {"lora": LoraConfig, "qlora": LoraConfig, "adapter": AdapterConfig, "prefix": PrefixConfig,
           "ptuning_v2": PrefixConfig, "prompt": PromptConfig, "ptuning": PromptConfig}


def make_config(method: str, **kw):
    if method not in METHODS:
        raise UserError(f"unknown PEFT method {method!r} (choose from {', '.join(METHODS)})")
    cls = CONFIGS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(kw) - names)
    if bad:
        raise UserError(f"{method}: unknown option(s) {', '.join(bad)} (known: {', '.join(sorted(names))})")
    if method == "ptuning_v2":
        kw["prefix_projection"] = False
    if method == "ptuning" and kw.get("encoder", "none") == "none":
        kw["encoder"] = "lstm"
    return cls(**kw)


def attach(base: nn.Module, method: str, init_token_ids: list[int] | None = None, **kw) -> nn.Module:
    cfg = make_config(method, **kw)
    if method == "lora":
        apply_lora(base, cfg)
    elif method == "qlora":
        apply_qlora(base, cfg)
    elif method == "adapter":
        apply_adapters(base, cfg)
    elif method in ("prefix", "ptuning_v2"):
        return PrefixModel(base, cfg, init_token_ids)
    else:
        return SoftPromptModel(base, cfg, init_token_ids)
    base.peft_method, base.peft_config = method, cfg
    return base


def save_peft(model: nn.Module, path: str | Path) -> Path:
    if isinstance(model, (PrefixModel, SoftPromptModel)):
        return model.save(path)
    method = getattr(model, "peft_method", None)
    if method in ("lora", "qlora"):
        return save_lora(model, path, model.peft_config, method=method)
    if method == "adapter":
        return save_adapters(model, path, model.peft_config)
    raise UserError("this model has no PEFT method attached (use finetune.methods.attach)")


def load_peft(base: nn.Module, path: str | Path, allow_other_base: bool = False, quantize: bool = False) -> nn.Module:
    """Rebuild a trained PEFT model from `path` on `base`. quantize=True puts LoRA on an NF4 base."""
    config, _, meta = io.read_adapter(path)
    method = meta.get("llmlab_method") or ("lora" if config.get("peft_type") == "LORA" else None)
    if method is None:
        raise UserError(f"{path}: not an llmlab or peft LoRA adapter (no method recorded, "
                        f"peft_type={config.get('peft_type')!r})")
    if method in ("lora", "qlora"):
        cfg = load_lora(base, path, QLoRALinear if (quantize or method == "qlora") else LoRALinear, allow_other_base)
        base.peft_method, base.peft_config = ("qlora" if isinstance(next(iter(lora_layers(base).values())),
                                                                    QLoRALinear) else "lora"), cfg
        return base
    if method == "adapter":
        base.peft_method, base.peft_config = "adapter", load_adapters(base, path, allow_other_base)
        return base
    if method in ("prefix", "ptuning_v2"):
        return PrefixModel.load(base, path, allow_other_base)
    if method == "prompt":
        return SoftPromptModel.load(base, path, allow_other_base)
    raise UserError(f"{path}: unknown adapter method {method!r}")
