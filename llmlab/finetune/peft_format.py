"""LoRA adapters in the HF `peft` on-disk format, both ways.

peft writes `adapter_config.json` (peft_type "LORA", r, lora_alpha, target_modules, ...) and
`adapter_model.safetensors` whose keys are `base_model.model.<module>.lora_A.weight` /
`.lora_B.weight` (the adapter name "default" is stripped on save). Our module names equal HF
LLaMA's, so an adapter saved here loads with `PeftModel.from_pretrained` onto transformers'
LlamaForCausalLM, and a peft-made adapter loads onto our Transformer. Features we do not
implement (DoRA, bias training, per-module rank patterns, modules_to_save, layer subsets) are
refused by name rather than silently ignored.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from llmlab.errors import UserError
from llmlab.finetune.io import check_base, check_method, load_strict_into, read_adapter, save_adapter
from llmlab.finetune.lora import LoraConfig, LoRALinear, apply_lora, lora_layers, lora_state_dict

PREFIX = "base_model.model."


def to_peft_config(cfg: LoraConfig, base_model_name: str = "") -> dict:
    tm = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name,
            "r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout, "target_modules": tm,
            "bias": "none", "fan_in_fan_out": False, "use_rslora": cfg.use_rslora, "use_dora": False,
            "init_lora_weights": True if cfg.init_lora_weights == "kaiming" else "gaussian",
            "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
            "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True}


def from_peft_config(d: dict, source: str) -> LoraConfig:
    if d.get("peft_type") != "LORA":
        raise UserError(f"{source}: peft_type is {d.get('peft_type')!r}, expected 'LORA'")
    # options that change which weights exist or how they combine: refuse rather than ignore
    unsupported = {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
                   "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": None,
                   "lora_bias": False, "trainable_token_indices": None, "target_parameters": None,
                   "layer_replication": None, "use_qalora": False, "alora_invocation_tokens": None}
    empty = (None, False, [], {}, "none")
    for k, ok in unsupported.items():
        v = d.get(k, ok)
        if v != ok and not (ok in empty and v in empty):
            raise UserError(f"{source}: {k}={v!r} is not supported (only {k}={ok!r})")
    tm = d.get("target_modules")
    if not tm:
        raise UserError(f"{source}: target_modules is missing")
    init = "kaiming" if d.get("init_lora_weights", True) is True else "gaussian"
    return LoraConfig(r=int(d["r"]), lora_alpha=float(d.get("lora_alpha", 8)), lora_dropout=float(d.get("lora_dropout", 0.0)),
                      target_modules=tm if isinstance(tm, str) else list(tm), init_lora_weights=init,
                      use_rslora=bool(d.get("use_rslora", False)))


def save_lora(model: nn.Module, path: str | Path, cfg: LoraConfig, base_model_name: str = "",
              method: str = "lora") -> Path:
    """Write only the LoRA tensors, in peft's layout and key names."""
    if any(getattr(m, "merged", False) for m in lora_layers(model).values()):
        raise UserError("LoRA weights are merged into the base: unmerge before saving the adapter")
    tensors = {PREFIX + k: v for k, v in lora_state_dict(model).items()}
    return save_adapter(path, method, to_peft_config(cfg, base_model_name), tensors, model)


def load_lora(model: nn.Module, path: str | Path, layer_cls=None, allow_other_base: bool = False) -> LoraConfig:
    """Inject LoRA layers described by `path`'s config into `model` and load its tensors (strict)."""
    config, tensors, meta = read_adapter(path)
    check_method(meta, ("lora", "qlora"), path)
    check_base(meta, model, path, allow_other_base)
    cfg = from_peft_config(config, f"{path}/adapter_config.json")
    bad = [k for k in tensors if not k.startswith(PREFIX)]
    if bad:
        raise UserError(f"{path}: tensor names must start with '{PREFIX}', got {bad[:3]}")
    if not lora_layers(model):
        apply_lora(model, cfg, layer_cls or LoRALinear)
    expected = lora_state_dict(model)
    got = {k[len(PREFIX):]: v for k, v in tensors.items()}
    load_strict_into(expected, got, path)  # detached views share storage with the Parameters
    return cfg
