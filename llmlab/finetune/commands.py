"""CLI verbs: `llmlab sft` (train), `llmlab peft <method>` (train one PEFT method), `llmlab sft data`
(instruction datasets), `llmlab peft params` and `llmlab merge` (fold a LoRA adapter)."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require
from llmlab.finetune.sft_config import SftConfig

VERBS: dict[str, Verb] = {}


@dataclass
class SftDataConfig:
    output_dir: str = field(default="data/sft", metadata={"help": "where <name>.train/.heldout.jsonl go"})
    datasets: list[str] = field(default_factory=lambda: ["wiki_en", "idiom_zh", "chitchat_en", "chitchat_zh",
                                                         "arith_en", "arith_zh"],
                                metadata={"help": "builders to run (comma-separated on the CLI)"})
    num_examples: int = field(default=500, metadata={"help": "examples per builder before the split"})
    heldout_fraction: float = field(default=0.1, metadata={"help": "share kept for evaluation"})
    seed: int = 0


@dataclass
class SelfInstructConfig:
    model: str = field(default="smollm2", metadata={"help": "the model that writes instructions and answers"})
    output: str = field(default="data/sft/self_instruct.jsonl", metadata={"help": "JSONL file to write"})
    num_instructions: int = field(default=50, metadata={"help": "records wanted"})
    max_rounds: int = field(default=10, metadata={"help": "generation rounds at most (budget)"})
    per_round: int = field(default=8, metadata={"help": "new-instruction requests per round"})
    rouge_threshold: float = field(default=0.7, metadata={"help": "reject if ROUGE-L >= this vs any pool entry"})
    method: str = field(default="self_instruct", metadata={"help": "self_instruct, or evol (Evol-Instruct: "
                                                                      "max_rounds rounds of evolving the seed tasks)"})
    evolver: str = field(default="llm", metadata={"help": "method=evol: llm (the model rewrites) or rules"})
    seed: int = 0


@verb(VERBS, "sft self_instruct", SelfInstructConfig)
def run_self_instruct(cfg: SelfInstructConfig) -> int:
    """Self-Instruct: a model writes new instructions + answers from seed tasks

    Example: llmlab sft self_instruct model=smollm2 num_instructions=20 output=data/sft/si.jsonl
    """
    from llmlab.finetune.instruct.self_instruct import from_model as self_instruct
    from llmlab.finetune.jsonl import write_jsonl

    if cfg.num_instructions < 1 or cfg.max_rounds < 1 or cfg.per_round < 1:
        raise UserError("num_instructions, max_rounds and per_round must be >= 1")
    if cfg.method == "evol":
        from llmlab.finetune.instruct.evol import from_model as evol_instruct
        recs, stats = evol_instruct(cfg.model, cfg.max_rounds, cfg.seed, cfg.evolver)
        write_jsonl(cfg.output, recs)
        print(json.dumps({"records": len(recs), "output": cfg.output, "rounds": stats}))
        return 0
    if cfg.method != "self_instruct":
        raise UserError(f"config key 'method': {cfg.method!r} is not self_instruct or evol")
    recs, stats = self_instruct(cfg.model, cfg.num_instructions, cfg.seed, cfg.max_rounds, cfg.per_round,
                                cfg.rouge_threshold)
    write_jsonl(cfg.output, recs)
    print(f"{len(recs)} records -> {cfg.output} ({stats['requests']} requests; rejected: {stats['rejected']})")
    return 0


@dataclass
class MergeConfig:
    model: str = field(default="smollm2", metadata={"help": "base: packaged name, .gguf file or HF-style dir"})
    adapter: str = field(default="", metadata={"help": "LoRA adapter directory (ours or peft-made)"})
    output_dir: str = field(default="", metadata={"help": "HF-style directory for the merged model"})
    allow_other_base: bool = field(default=False, metadata={"help": "skip the base-model fingerprint check"})


@dataclass
class PeftParamsConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    methods: list[str] = field(default_factory=lambda: ["lora", "qlora", "adapter", "prefix", "ptuning_v2",
                                                        "prompt", "ptuning"],
                               metadata={"help": "methods to attach, each with its default options"})


@verb(VERBS, "peft params", PeftParamsConfig)
def run_peft_params(cfg: PeftParamsConfig) -> int:
    """what each PEFT method trains and stores on a model (default options)

    Example: llmlab peft params model=smollm2 methods=lora,prefix

    Attach each method to a fresh copy of the model; print trainable parameters and adapter size.
    """
    import copy
    import tempfile
    from pathlib import Path as P

    from llmlab.device import setup_threads
    from llmlab.finetune.methods import attach, save_peft
    from llmlab.finetune.qlora import stored_weight_bytes
    from llmlab.finetune.targets import count_trainable
    from llmlab.model.load import load_model

    setup_threads()
    base, _ = load_model(cfg.model)
    total = count_trainable(base)[1]
    print(f"{'method':<11} {'trainable':>12} {'% of base':>9} {'adapter file':>13}  note")
    for method in cfg.methods:
        model = attach(copy.deepcopy(base), method)
        n = count_trainable(model)[0]
        with tempfile.TemporaryDirectory() as d:
            size = (save_peft(model, P(d) / "a") / "adapter_model.safetensors").stat().st_size
        note = ""
        if method == "qlora":
            s, f = stored_weight_bytes(model)
            note = f"4-bit base weights {s / 2**20:.1f} MiB vs {f / 2**20:.1f} MiB fp32"
        print(f"{method:<11} {n:>12,} {100 * n / total:>8.3f}% {size / 2**10:>10.1f} KiB  {note}")
    return 0


@verb(VERBS, "sft data", SftDataConfig)
def run_sft_data(cfg: SftDataConfig) -> int:
    """build instruction JSONL (TRL columns) with held-out splits

    Example: llmlab sft data output_dir=data/sft num_examples=200 datasets=arith_en,idiom_zh
    """
    from llmlab.finetune.instruct.builders import build_all

    if cfg.num_examples < 1:
        raise UserError(f"num_examples must be >= 1, got {cfg.num_examples}")
    manifest = build_all(cfg.output_dir, cfg.num_examples, cfg.seed, cfg.heldout_fraction, cfg.datasets)
    for name, info in manifest.items():
        print(f"{name}: {info['train']} train / {info['heldout']} held out ({info['provenance']}; {info['source']})")
    return 0


@verb(VERBS, "merge", MergeConfig)
def run_merge(cfg: MergeConfig) -> int:
    """fold a LoRA adapter into its base model and save an HF dir

    Example: llmlab merge model=smollm2 adapter=runs/lora output_dir=runs/merged
    """
    from llmlab.device import setup_threads
    from llmlab.finetune.lora import merge_and_unload
    from llmlab.finetune.peft_format import load_lora
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.load import load_model

    require(cfg.adapter and cfg.output_dir, "pass adapter=<dir> and output_dir=<dir>")
    if not Path(cfg.adapter).is_dir():
        raise UserError(f"adapter directory not found: {cfg.adapter}")
    setup_threads()
    model, path = load_model(cfg.model)
    load_lora(model, cfg.adapter, allow_other_base=cfg.allow_other_base)
    save_hf_dir(merge_and_unload(model), cfg.output_dir, extra_files=_tokenizer_files(path))
    print(f"merged {cfg.adapter} into {cfg.model} -> {cfg.output_dir}")
    return 0


def _tokenizer_files(model_path) -> dict[str, str]:
    """tokenizer.json + tokenizer_config.json of the base, so the merged dir is usable on its own."""
    from llmlab.tokenizer.bpe import load_tokenizer

    try:
        tok = load_tokenizer(model_path)
    except UserError:
        return {}  # a base without a tokenizer (e.g. a bare test model): weights only
    return tok.hf_files()


@verb(VERBS, "sft", SftConfig)
def run_sft_verb(cfg) -> int:
    """supervised fine-tuning on chat data (full, or method=<peft method>)

    Example: llmlab sft configs/sft_smollm2.yaml max_steps=100 output_dir=runs/sft
    """
    from llmlab.finetune.sft import run_sft

    print(run_sft(cfg))
    return 0


def _copy_field(f: dataclasses.Field, default=dataclasses.MISSING):
    if default is not dataclasses.MISSING:
        return field(default=default, metadata=f.metadata)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field(default_factory=f.default_factory, metadata=f.metadata)  # type: ignore[misc]
    return field(default=f.default, metadata=f.metadata)


def peft_verb_config(method: str) -> type:
    """SftConfig's keys (but `method`) plus the method's own options as top-level keys (r=8, ...)."""
    from llmlab.finetune.methods import CONFIGS

    out = []
    for cls in (SftConfig, CONFIGS[method]):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "method" or (method == "ptuning_v2" and f.name == "prefix_projection"):
                continue
            if any(f.name == o[0] for o in out):
                raise RuntimeError(f"option {f.name} of {method} clashes with an SFT key")
            default = "lstm" if (method == "ptuning" and f.name == "encoder") else dataclasses.MISSING
            out.append((f.name, hints[f.name], _copy_field(f, default)))
    return dataclasses.make_dataclass(f"Peft_{method}_Config", out)


def _peft_runner(method: str):
    def run(cfg) -> int:
        from llmlab.finetune.methods import CONFIGS

        sft_keys = {f.name for f in dataclasses.fields(SftConfig)}
        kw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in sft_keys}
        defaults = {f.name: f for f in dataclasses.fields(type(cfg))}
        opts = {}
        for f in dataclasses.fields(CONFIGS[method]):
            if f.name in defaults:
                d = defaults[f.name]
                default = d.default_factory() if d.default_factory is not dataclasses.MISSING else d.default  # type: ignore[misc]
                if getattr(cfg, f.name) != default:  # options given on the command line win over `peft:`
                    opts[f.name] = getattr(cfg, f.name)
        kw["peft"] = {**(kw.get("peft") or {}), **opts}
        return run_sft_verb(SftConfig(method=method, **kw))
    return run


def _peft_verbs() -> dict:
    from llmlab.finetune.methods import METHODS

    return {f"peft {m}": Verb(peft_verb_config(m), _peft_runner(m), f"train {m} on instruction data (the SFT loop)",
                              f"llmlab peft {m} configs/sft_smollm2.yaml" + (" r=8" if m in ("lora", "qlora") else ""))
            for m in METHODS}


VERBS.update(_peft_verbs())
