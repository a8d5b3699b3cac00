"""SftConfig: every supervised fine-tuning knob, with HF `TrainingArguments` / TRL `SFTConfig` names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from llmlab.errors import UserError

METHODS = ("full", "lora", "qlora", "adapter", "prefix", "ptuning_v2", "prompt", "ptuning")
# usual peak learning rates: TRL's SFT default for full fine-tuning; 2e-4 for LoRA/QLoRA/adapters
# (the QLoRA paper's rate for its smaller models); prefix/prompt methods train a few vectors and
# need far larger steps (HF peft's examples use 1e-2 to 3e-2)
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4, "adapter": 2e-4, "prefix": 1e-2, "ptuning_v2": 1e-2,
              "prompt": 3e-2, "ptuning": 1e-2}
DEFAULT_DATASETS = ["arith_en", "arith_zh", "idiom_zh", "wiki_en", "chitchat_en", "chitchat_zh"]


@dataclass
class SftConfig:
    # what to train
    model: str = field(default="smollm2", metadata={"help": "base: packaged name, .gguf file or HF-style dir"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer file/dir ('' = the one next to the model)"})
    method: str = field(default="full", metadata={"help": "full | " + " | ".join(METHODS[1:])})
    peft: dict = field(default_factory=dict, metadata={"help": "method options, e.g. peft.r=8 "
                                                               "peft.target_modules=[q_proj,v_proj]"})
    init_adapter: str = field(default="", metadata={"help": "continue training this saved adapter (PEFT methods)"})
    allow_other_base: bool = field(default=False, metadata={"help": "init_adapter: skip the base-model check"})
    prompt_init_text: str = field(default="", metadata={
        "help": "prompt/ptuning/ptuning_v2: start the virtual tokens from this text's tokens (Lester et al.)"})
    # data
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS),
                                metadata={"help": "builder names (llmlab sft data) and/or .jsonl files"})
    num_examples: int = field(default=500, metadata={"help": "examples per builder, before the held-out split"})
    heldout_fraction: float = field(default=0.1, metadata={"help": "builders: share kept out of training"})
    dataset_seed: int = field(default=0, metadata={"help": "builders' seed (same as `llmlab sft data seed=`)"})
    on_bad_line: Literal["raise", "skip"] = field(default="raise",
                                                  metadata={"help": "malformed JSONL line: stop (file:line) or skip"})
    max_length: int = field(default=512, metadata={"help": "tokens per training row; longer examples are cut"})
    packing: bool = field(default=False, metadata={"help": "pack examples into rows (per-document causal mask)"})
    assistant_only_loss: bool = field(default=True, metadata={"help": "loss on assistant tokens only"})
    replay_data: str = field(default="", metadata={"help": "pretraining text to mix in: shard dir, .txt or .jsonl"})
    replay_ratio: float = field(default=0.0, metadata={"help": "fraction of training rows taken from replay_data"})
    # optimisation
    learning_rate: Optional[float] = field(default=None, metadata={
        "help": "peak lr; none = the method's usual one (" + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")"})
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the data (when max_steps <= 0)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; > 0 overrides num_train_epochs"})
    lr_scheduler_type: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    warmup_ratio: float = field(default=0.03, metadata={"help": "warmup as a fraction of the steps"})
    warmup_steps: int = field(default=0, metadata={"help": "> 0 overrides warmup_ratio"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "final lr / peak lr"})
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "global-norm clipping; 0 = off"})
    gradient_checkpointing: bool = False
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (slow on most CPUs)"})
    device: str = "auto"
    seed: int = 42
    # evaluation / logging / saving
    eval_steps: int = field(default=0, metadata={"help": "held-out loss every N steps (0 = only at the end)"})
    eval_max_examples: int = field(default=64, metadata={"help": "held-out examples for the loss (0 = no eval)"})
    logging_steps: int = 10
    output_dir: str = field(default="runs/sft", metadata={"help": "checkpoints, metrics.jsonl, model/ or adapter/"})
    save_strategy: Literal["steps", "no"] = field(default="steps", metadata={"help": "no = no checkpoints at all"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only at the end)"})
    save_total_limit: int = field(default=2, metadata={"help": "keep this many newest checkpoints (0 = all)"})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={
        "help": "a checkpoint dir, or 'auto' = newest valid one in output_dir"})
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "png"], metadata={"help": "jsonl, tensorboard, png"})
    disable_tqdm: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"method: unknown {self.method!r} (choose from {', '.join(METHODS)})")
        if self.method == "full" and (self.peft or self.init_adapter):
            raise UserError("peft options / init_adapter need a PEFT method (method=lora, ...), not method=full")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "num_examples"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise UserError("set max_steps > 0 or num_train_epochs > 0")
        for name in ("warmup_steps", "eval_steps", "eval_max_examples", "save_steps", "logging_steps",
                     "weight_decay", "max_grad_norm", "save_total_limit"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmup_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.replay_ratio < 1.0:
            raise UserError(f"replay_ratio must be in [0, 1), got {self.replay_ratio}")
        if self.replay_ratio > 0 and not self.replay_data:
            raise UserError("replay_ratio > 0 needs replay_data=<shard dir | .txt | .jsonl>")
        if not self.datasets:
            raise UserError("datasets is empty: name builders (arith_en, ...) or .jsonl files")
        bad = set(self.report_to) - {"jsonl", "tensorboard", "png"}
        if bad:
            raise UserError(f"report_to: unknown {sorted(bad)} (use jsonl, tensorboard, png)")

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.method]
