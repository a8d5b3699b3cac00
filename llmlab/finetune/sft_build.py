"""Building what the SFT loop trains: the model (base + PEFT method or an adapter to continue) and
its data (records -> rows -> RowLoader, plus held-out rows), from an SftConfig."""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from llmlab.errors import UserError
from llmlab.finetune.sft_config import SftConfig

# which saved adapter each method can continue training (init_adapter=)
PEFT_COMPATIBLE = {"lora": {"lora", "qlora"}, "qlora": {"lora", "qlora"}, "adapter": {"adapter"},
                   "prefix": {"prefix", "ptuning_v2"}, "ptuning_v2": {"prefix", "ptuning_v2"},
                   "prompt": {"prompt"}, "ptuning": {"prompt"}}


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a prefix/prompt wrapper (or the model itself)."""
    from llmlab.finetune.prefix import PrefixModel
    from llmlab.finetune.prompt import SoftPromptModel

    return model.base if isinstance(model, (PrefixModel, SoftPromptModel)) else model


def cli_targets(value: str) -> str | list[str]:
    """target_modules given as text: "q_proj,v_proj" (no regex characters) is a list of names, as on
    the command line; anything else is one full-match regular expression (PEFT's rule for a string)."""
    if re.search(r"[\\^$*+?()\[\]{}|]", value) or "." in value:
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


def build_model(cfg: SftConfig):
    """-> (model to train, tokenizer, model path). The base is frozen for PEFT methods."""
    from llmlab.config import from_dict
    from llmlab.finetune.io import read_adapter
    from llmlab.finetune.methods import CONFIGS, attach, load_peft
    from llmlab.model.load import load_model
    from llmlab.tokenizer.bpe import load_tokenizer

    base, path = load_model(cfg.model)
    tok = load_tokenizer(cfg.tokenizer or path)
    if tok.vocab_size > base.config.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                        f"{base.config.vocab_size}: tokenizer={cfg.tokenizer or path} does not belong to model={cfg.model}")
    torch.manual_seed(cfg.seed)  # the adapter's random init
    if cfg.method == "full":
        base.requires_grad_(True)
        return base, tok, path
    if cfg.init_adapter:
        saved = read_adapter(cfg.init_adapter)[2].get("llmlab_method") or "lora"
        if saved not in PEFT_COMPATIBLE[cfg.method]:
            raise UserError(f"init_adapter {cfg.init_adapter} is a '{saved}' adapter; method={cfg.method} cannot train it")
        return load_peft(base, cfg.init_adapter, cfg.allow_other_base, quantize=cfg.method == "qlora"), tok, path
    opts = dataclasses.asdict(from_dict(CONFIGS[cfg.method], dict(cfg.peft), prefix="peft."))
    if isinstance(opts.get("target_modules"), str):
        opts["target_modules"] = cli_targets(opts["target_modules"])
    init_ids = None
    if cfg.prompt_init_text:
        if cfg.method not in ("prompt", "ptuning", "ptuning_v2"):
            raise UserError(f"prompt_init_text applies to prompt, ptuning and ptuning_v2, not {cfg.method}")
        init_ids = tok.encode(cfg.prompt_init_text) or None
    return attach(base, cfg.method, init_token_ids=init_ids, **opts), tok, path


def build_data(cfg: SftConfig, tok, vocab_size: int, progress: bool = True):
    """-> (RowLoader, held-out rows, stats)."""
    import numpy as np

    from llmlab.finetune import sft_data as D

    train, held = D.load_records(cfg.datasets, cfg.num_examples, cfg.dataset_seed, cfg.heldout_fraction,
                                 cfg.on_bad_line)
    examples, stats = D.encode_records(tok, train, cfg.max_length, cfg.assistant_only_loss, "tokenize", progress)
    if not examples:
        raise UserError(f"no training example has an assistant token within max_length={cfg.max_length} "
                        f"({stats['dropped_no_target']} dropped): raise max_length")
    # a seeded shuffle before packing, so rows mix datasets
    order = np.random.default_rng([cfg.seed, 1]).permutation(len(examples))
    rows = D.make_rows([examples[i] for i in order], cfg.max_length, cfg.packing)
    stats["sft_rows"] = len(rows)
    if cfg.replay_ratio > 0:
        n = round(len(rows) * cfg.replay_ratio / (1 - cfg.replay_ratio))
        rows += D.replay_rows(D.replay_tokens(cfg.replay_data, tok, vocab_size), n, cfg.max_length, cfg.seed,
                              cfg.packing)
        stats["replay_rows"] = n
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    eval_rows = []
    if cfg.eval_max_examples and held:
        pick = np.random.default_rng([cfg.seed, 2]).permutation(len(held))[:cfg.eval_max_examples]
        ex, _ = D.encode_records(tok, [held[i] for i in sorted(pick)], cfg.max_length, cfg.assistant_only_loss,
                                 "held-out", progress)
        eval_rows = D.make_rows(ex, cfg.max_length, packing=False)
    stats["heldout_rows"] = len(eval_rows)
    return D.RowLoader(rows, cfg.per_device_train_batch_size, pad, cfg.seed), eval_rows, stats
