"""CLI verbs: `llmlab sft data` (instruction datasets) and `llmlab merge` (fold a LoRA adapter)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmlab.command import Verb
from llmlab.errors import UserError


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


def run_peft_params(cfg: PeftParamsConfig) -> int:
    """Attach each method to a fresh copy of the model; print trainable parameters and adapter size."""
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


def run_sft_data(cfg: SftDataConfig) -> int:
    from llmlab.finetune.datasets import build_all

    if cfg.num_examples < 1:
        raise UserError(f"num_examples must be >= 1, got {cfg.num_examples}")
    manifest = build_all(cfg.output_dir, cfg.num_examples, cfg.seed, cfg.heldout_fraction, cfg.datasets)
    for name, info in manifest.items():
        print(f"{name}: {info['train']} train / {info['heldout']} held out ({info['provenance']}; {info['source']})")
    return 0


def run_merge(cfg: MergeConfig) -> int:
    from llmlab.device import setup_threads
    from llmlab.finetune.lora import merge_and_unload
    from llmlab.finetune.peft_format import load_lora
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.load import load_model

    if not cfg.adapter or not cfg.output_dir:
        raise UserError("pass adapter=<dir> and output_dir=<dir>")
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
    import tempfile

    from llmlab.tokenizer.bpe import load_tokenizer

    try:
        tok = load_tokenizer(model_path)
    except UserError:
        return {}  # a base without a tokenizer (e.g. a bare test model): weights only
    with tempfile.TemporaryDirectory() as d:
        out = tok.save(Path(d) / "tok")
        return {f.name: f.read_text(encoding="utf-8") for f in out.iterdir()}


VERBS = {
    "peft params": Verb(PeftParamsConfig, run_peft_params,
                        "what each PEFT method trains and stores on a model (default options)",
                        "llmlab peft params model=smollm2 methods=lora,prefix"),
    "sft data": Verb(SftDataConfig, run_sft_data, "build instruction JSONL (TRL columns) with held-out splits",
                     "llmlab sft data output_dir=data/sft num_examples=200 datasets=arith_en,idiom_zh"),
    "merge": Verb(MergeConfig, run_merge, "fold a LoRA adapter into its base model and save an HF dir",
                  "llmlab merge model=smollm2 adapter=runs/lora output_dir=runs/merged"),
}
