"""Select modules by name, with the same rules as HF PEFT's `target_modules`.

A list of names matches a module whose full name equals an entry or ends with "." + entry
(["q_proj", "v_proj"] matches "model.layers.0.self_attn.q_proj"); a single string is a regular
expression that must match the *whole* name (re.fullmatch), as in PEFT. Matching nothing is an error:
a typo must not silently fine-tune zero parameters.
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from llmlab.errors import UserError


def name_matches(name: str, targets: str | Iterable[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, targets: str | Iterable[str], kind: type | tuple = nn.Linear,
                 key: str = "target_modules") -> list[str]:
    """Names of the modules of type `kind` matched by `targets`; UserError when there are none."""
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise UserError(f"{key}: invalid regular expression {targets!r} ({e})") from None
    else:
        targets = list(targets)
        if not targets:
            raise UserError(f"{key}: empty list")
    # never match the layers that an adapter added (lora_A, adapter_down, ...)
    names = [n for n, m in model.named_modules() if isinstance(m, kind) and name_matches(n, targets)
             and not any(part.startswith(("lora_", "adapter_", "prefix_", "prompt_")) for part in n.split("."))]
    if not names:
        kinds = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        examples = [n for n, m in model.named_modules() if isinstance(m, kind)][:4]
        raise UserError(f"{key}={targets!r} matches no {kinds} module (names look like: {', '.join(examples)})")
    return names


def check_plain(model: nn.Module, names: list[str], kind: type = nn.Linear) -> None:
    """Refuse to wrap a module that is already wrapped (stacking would drop the first adapter)."""
    for n in names:
        m = model.get_submodule(n)
        if type(m) is not kind:
            raise UserError(f"{n} is already adapted ({type(m).__name__}); load or attach one method per module")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
