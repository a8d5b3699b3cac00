"""CLI verb `llmlab consolidate`: a sharded (DCP) checkpoint from `llmlab train strategy=...`,
written by any number of ranks, into the usual HF model dir (one process, no torchrun).

  llmlab consolidate checkpoint=runs/fsdp/checkpoint-100 output_dir=runs/fsdp/model-100
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require
from llmlab.train.commands import TRAIN_LOOPS

VERBS: dict[str, Verb] = {}


@dataclass
class ConsolidateConfig:
    checkpoint: str = field(default="", metadata={"help": "a checkpoint-N dir written by strategy=zero1|zero2|fsdp"})
    output_dir: str = field(default="", metadata={"help": "where the HF model dir goes"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer dir whose files are copied into the model dir"})


@verb(VERBS, "consolidate", ConsolidateConfig)
def run_consolidate(cfg: ConsolidateConfig) -> int:
    """sharded (DCP) training checkpoint -> HF model dir

    Example: llmlab consolidate checkpoint=runs/fsdp/checkpoint-100 output_dir=runs/fsdp/model
    """
    from pathlib import Path

    from llmlab.distributed.sharded_checkpoint import consolidate
    require(cfg.checkpoint and cfg.output_dir, "checkpoint=... and output_dir=... are required")
    if not Path(cfg.checkpoint).is_dir():
        raise UserError(f"checkpoint dir not found: {cfg.checkpoint}")
    from llmlab.train.commands import tokenizer_files
    extra = tokenizer_files(cfg.tokenizer) if cfg.tokenizer else {}
    out = consolidate(cfg.checkpoint, cfg.output_dir, extra_files=extra)
    print(f"consolidated {cfg.checkpoint} -> {out}")
    return 0


def _zero_fsdp_loop(*args, **kw):
    from llmlab.distributed.loop import train
    return train(*args, **kw)


def _deepspeed_loop(*args, **kw):
    from llmlab.distributed.deepspeed_loop import train
    return train(*args, **kw)


# `llmlab train strategy=... | deepspeed=...` dispatches here (llmlab.train cannot import a later stage)
TRAIN_LOOPS.update(zero1=_zero_fsdp_loop, zero2=_zero_fsdp_loop, fsdp=_zero_fsdp_loop, cp=_zero_fsdp_loop,
                   ep=_zero_fsdp_loop, deepspeed=_deepspeed_loop)
