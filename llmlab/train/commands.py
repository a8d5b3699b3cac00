"""CLI verb `llmlab train`: pretrain a model sized by `depth` (or a preset) on token shards or a text file.

Single process:  llmlab train data=runs/data/tokens preset=cpu output_dir=runs/pre
Data parallel:   torchrun --nproc_per_node 2 -m llmlab.cli train data=runs/data/tokens preset=cpu
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.verb import Verb, verb
from llmlab.config import is_explicit
from llmlab.errors import UserError, require
from llmlab.train.config import TrainConfig

VERBS: dict[str, Verb] = {}


@dataclass
class TrainCommandConfig(TrainConfig):
    data: str = field(default="", metadata={"help": "token-shard dir from `llmlab data tokenize` (with train/ "
                                                    "and val/), or a UTF-8 .txt file trained byte-level"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer dir whose files are copied into saved models"})
    preset: str = field(default="", metadata={"help": "tiny | cpu | small | gpu: depth + budget (keys left at "
                                                      "their defaults take the preset's values); or an "
                                                      "architecture (gpt2, llama, mistral, mixtral, qwen2, gemma, "
                                                      "bloom, phi, palm, deepseek-moe) sized by depth"})
    depth: int = field(default=0, metadata={"help": "model size dial: width 64*depth, depth layers (0: preset or 4)"})
    tokens_per_param: float = field(default=0.0, metadata={"help": "sets max_steps to this x params tokens (0: off)"})
    init_from: str = field(default="", metadata={"help": "continue pretraining this model (smollm2, .gguf, HF dir)"})
    val_fraction: float = field(default=0.05, metadata={"help": ".txt data: tail fraction held out for eval"})
    shuffle: bool = field(default=True, metadata={"help": "shard data: shuffle windows (seeded)"})


# training loops of later stages, by strategy name (llmlab.distributed.commands fills it: no backward import)
TRAIN_LOOPS: dict = {}


def tokenizer_files(path: str) -> dict[str, str]:
    """name -> text of a tokenizer dir's files, written into every saved model dir."""
    tdir = Path(path)
    if not tdir.is_dir():
        raise UserError(f"tokenizer dir not found: {tdir}")
    return {f.name: f.read_text(encoding="utf-8") for f in tdir.iterdir()
            if f.is_file() and f.suffix in (".json", ".txt", ".jinja", ".model")}

def _tokenizer(cfg):
    """The tokenizer of init_from or tokenizer= (for the ids of an objective's special tokens), or None."""
    from llmlab.model.load import resolve_model_path
    from llmlab.tokenizer.bpe import load_tokenizer
    for ref in (cfg.init_from, cfg.tokenizer):
        try:
            if ref:
                return load_tokenizer(resolve_model_path(ref))
        except (UserError, FileNotFoundError):
            continue
    return None


def _bytes_per_token(val_dir: Path, val_tokens: int) -> float:
    """Text bytes per token of the val split: `num_bytes` in the shard index (llmlab.data writes it),
    else the UTF-8 size of the val.jsonl that `data tokenize` read."""
    idx = val_dir / "index.json"
    if idx.is_file():
        meta = json.loads(idx.read_text(encoding="utf-8"))
        if meta.get("num_bytes") and meta.get("num_tokens"):
            return meta["num_bytes"] / meta["num_tokens"]
    for cand in (val_dir.parent.parent / "val.jsonl", val_dir.parent / "val.jsonl"):
        if cand.is_file() and val_tokens:
            from llmlab.data.packages import iter_jsonl
            n = sum(len(rec.get("text", "").encode("utf-8")) for rec in iter_jsonl(cand))
            return n / val_tokens
    return 0.0


def _loaders(cfg: TrainCommandConfig, rank: int, world: int):
    """(train_loader, val_loader, vocab_size, eos_id, bytes_per_token)."""
    p = Path(cfg.data)
    require(cfg.data, "data is required: a token-shard dir (llmlab data tokenize) or a .txt file")
    if not p.exists():
        raise UserError(f"data not found: {p}")
    B, T = cfg.per_device_train_batch_size, cfg.max_length
    if p.is_file():
        import torch

        from llmlab.train.loader import TokenArrayLoader
        raw = p.read_bytes()
        if not raw:
            raise UserError(f"{p}: empty file (no training data)")
        toks = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        n_val = int(len(toks) * cfg.val_fraction)
        train = TokenArrayLoader(toks[:len(toks) - n_val], T, B, rank, world, name=f"{p} (train part)")
        val = TokenArrayLoader(toks[len(toks) - n_val:], T, 1, rank, world, loop=False,
                               name=f"{p} (val part)") if n_val > world * (T + 1) else None
        return train, val, 256, None, 1.0
    from llmlab.data.loader import TokenWindowLoader
    from llmlab.data.shards import open_shards
    tdir = p / "train" if (p / "train").is_dir() else p
    header = open_shards(tdir)[0].header
    train = TokenWindowLoader(tdir, T, B, rank, world, seed=cfg.seed, shuffle=cfg.shuffle)
    val, bpt = None, 0.0
    if (p / "val").is_dir():
        val = TokenWindowLoader(p / "val", T, 1, rank, world, shuffle=False)
        bpt = _bytes_per_token(p / "val", sum(int(s.tokens.size) for s in val.shards))
    return train, val, int(header["vocab_size"]), header.get("eos_id"), bpt


def _preset_shape(cfg: TrainCommandConfig) -> None:
    """The preset's window, micro-batch and token budget, for keys left at their defaults (needed
    before the loaders are built, so they run before the vocabulary is known)."""
    from llmlab.model.presets import PRESETS as ARCH
    from llmlab.train.sizing import PRESETS
    if cfg.preset and cfg.preset not in PRESETS and cfg.preset not in ARCH:
        raise UserError(f"unknown preset '{cfg.preset}'; known: {', '.join([*PRESETS, *ARCH])}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainCommandConfig)
                if f.default is not dataclasses.MISSING}
    for k, v in PRESETS.get(cfg.preset, {}).items():
        if k != "depth" and not is_explicit(cfg, k) and getattr(cfg, k) == defaults.get(k):
            setattr(cfg, k, v)


def _apply_preset(cfg: TrainCommandConfig, vocab: int, world: int):
    """Size the model from `depth` (or the preset's) and fill every key still at its default with the
    derived value: lr, gradient accumulation (batch), max_steps (token budget), warmup."""
    from llmlab.model.presets import PRESETS as ARCH
    from llmlab.model.presets import train_model_kwargs
    from llmlab.train.sizing import PRESETS, size_model
    if cfg.preset and cfg.preset not in PRESETS and cfg.preset not in ARCH:
        raise UserError(f"unknown preset '{cfg.preset}'; known: {', '.join([*PRESETS, *ARCH])}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainCommandConfig)
                if f.default is not dataclasses.MISSING}

    def fill(key, value):
        if not is_explicit(cfg, key) and getattr(cfg, key) == defaults.get(key):
            setattr(cfg, key, value)

    cfg.depth = cfg.depth or PRESETS.get(cfg.preset, {}).get("depth", 4)
    micro = cfg.per_device_train_batch_size * cfg.max_length * world
    arch = (train_model_kwargs(cfg.preset, cfg.depth, 64 * cfg.depth, cfg.max_length)
            if cfg.preset in ARCH else {})  # an architecture preset: its design at this depth
    s = size_model(cfg.depth, vocab, cfg.max_length, cfg.tokens_per_param or 20.0, micro_batch_tokens=micro, **arch)
    fill("learning_rate", s.learning_rate)
    fill("gradient_accumulation_steps", s.batch_tokens // micro)
    fill("max_steps", max(1, s.tokens // (micro * cfg.gradient_accumulation_steps)))
    fill("warmup_steps", max(1, cfg.max_steps // 50))
    return s


@verb(VERBS, "train", TrainCommandConfig)
def run_train(cfg: TrainCommandConfig) -> int:
    """pretrain a Transformer (AdamW, schedules, DDP via torchrun, exact resume, spike guard)

    Example: llmlab train data=runs/data/tokens preset=cpu output_dir=runs/pretrain
    """
    import torch

    from llmlab.device import resolve_device, setup_threads
    from llmlab.log import get_logger
    from llmlab.model import Transformer
    from llmlab.train import distributed as D
    from llmlab.train.trainer import train

    setup_threads()
    log = get_logger("llmlab.train")
    info = D.setup(resolve_device(cfg.device))
    try:
        _preset_shape(cfg)
        # context parallel: the ranks split every sequence of one shared batch, so they read one stream
        data_rank, data_world = (0, 1) if cfg.strategy == "cp" else (info.rank, info.world_size)
        train_loader, val_loader, vocab, eos, bpt = _loaders(cfg, data_rank, data_world)
        if not cfg.bytes_per_token:
            cfg.bytes_per_token = bpt
        if cfg.init_from:
            if cfg.weight_init != "default":
                raise UserError(f"weight_init={cfg.weight_init} would overwrite the init_from weights: drop one")
            from llmlab.model.load import load_model
            model, _ = load_model(cfg.init_from)
            if model.config.vocab_size < vocab:
                raise UserError(f"init_from {cfg.init_from}: vocab_size {model.config.vocab_size} < the data's {vocab}")
        else:
            sizing = _apply_preset(cfg, vocab, data_world)
            sizing.model.eos_token_id = eos
            torch.manual_seed(cfg.seed)  # identical initial weights on every rank
            model = Transformer(sizing.model)
            if info.is_main:
                log.info(f"model: {sizing.summary()} (derived); using lr {cfg.learning_rate:.2e}, "
                         f"{cfg.max_steps} steps of {cfg.per_device_train_batch_size} x {cfg.max_length} x "
                         f"{cfg.gradient_accumulation_steps} accumulation x {info.world_size} ranks")
        extra = tokenizer_files(cfg.tokenizer) if cfg.tokenizer else {}
        fpt = None
        if cfg.objective != "causal_lm" or cfg.architecture not in ("", "decoder"):  # llmlab.train.objectives
            from llmlab.train.objectives.setup import prepare
            model, train_loader, val_loader, extra, fpt = prepare(cfg, model, train_loader, val_loader, extra,
                                                                  vocab, eos, _tokenizer(cfg))
            cfg.bytes_per_token = 0.0 if cfg.objective != "causal_lm" else cfg.bytes_per_token  # not per-text loss
        tcfg = TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})
        loop = "deepspeed" if tcfg.deepspeed else tcfg.strategy
        if loop != "ddp":  # ZeRO-1/2, FSDP2, DeepSpeed: registered by llmlab.distributed (docs/distributed.md)
            if loop not in TRAIN_LOOPS:
                raise UserError(f"{loop}: llmlab.distributed is not loaded (run it through the llmlab CLI)")
            train = TRAIN_LOOPS[loop]
        res = train(tcfg, model, train_loader, val_loader, extra_files=extra, model_flops_per_token=fpt)
        if info.is_main:
            bpb = f", val bits/byte {res.val_bpb:.4f}" if res.val_bpb is not None else ""
            val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
            print(f"trained {res.step} steps ({res.tokens} tokens, {res.seconds:.0f}s): train loss "
                  f"{res.train_loss:.4f}{val}{bpb}; model: {res.output_dir / 'model'}")
    finally:
        D.cleanup(info)
    return 0
