"""SftConfig: every supervised fine-tuning knob, with HF `TrainingArguments` / TRL `SFTConfig` names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from llmlab.errors import UserError
from llmlab.train.config import TrainingBase

METHODS = ("full", "lora", "qlora", "adapter", "prefix", "ptuning_v2", "prompt", "ptuning")
# usual peak learning rates: TRL's SFT default for full fine-tuning; 2e-4 for LoRA/QLoRA/adapters
# (the QLoRA paper's rate for its smaller models); prefix/prompt methods train a few vectors and
# need far larger steps (HF peft's examples use 1e-2 to 3e-2)
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4, "adapter": 2e-4, "prefix": 1e-2, "ptuning_v2": 1e-2,
              "prompt": 3e-2, "ptuning": 1e-2}
DEFAULT_DATASETS = ["arith_en", "arith_zh", "idiom_zh", "wiki_en", "chitchat_en", "chitchat_zh"]


@dataclass
class SftConfig(TrainingBase):
    """SFT: the shared training knobs (`llmlab.train.config.TrainingBase`) with SFT defaults, plus
    what to train and on which data."""
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
    packing: bool = field(default=False, metadata={"help": "pack examples into rows (per-document causal mask)"})
    assistant_only_loss: bool = field(default=True, metadata={"help": "loss on assistant tokens only"})
    replay_data: str = field(default="", metadata={"help": "pretraining text to mix in: shard dir, .txt or .jsonl"})
    replay_ratio: float = field(default=0.0, metadata={"help": "fraction of training rows taken from replay_data"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the data (when max_steps <= 0)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "warmup as a fraction of the steps"})
    eval_max_examples: int = field(default=64, metadata={"help": "held-out examples for the loss (0 = no eval)"})
    save_strategy: Literal["steps", "no"] = field(default="steps", metadata={"help": "no = no checkpoints at all"})
    average_last: float = field(default=0.0, metadata={
        "help": "fraction of the final steps whose weights are averaged into the model (tail/SWA average; 0 = off)"})
    # the shared knobs whose SFT defaults differ from pretraining's
    output_dir: str = field(default="runs/sft", metadata={"help": "checkpoints, metrics.jsonl, model/ or adapter/"})
    learning_rate: Optional[float] = field(default=None, metadata={
        "help": "peak lr; none = the method's usual one (" + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")"})
    max_length: int = field(default=512, metadata={"help": "tokens per training row; longer examples are cut"})
    per_device_train_batch_size: int = 4
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; > 0 overrides num_train_epochs"})
    warmup_steps: int = field(default=0, metadata={"help": "> 0 overrides warmup_ratio"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "final lr / peak lr"})
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    eval_steps: int = field(default=0, metadata={"help": "held-out loss every N steps (0 = only at the end)"})
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "png"], metadata={"help": "jsonl, tensorboard, png"})

    def __post_init__(self):
        super().__post_init__()
        if self.method not in METHODS:
            raise UserError(f"method: unknown {self.method!r} (choose from {', '.join(METHODS)})")
        if self.method == "full" and (self.peft or self.init_adapter):
            raise UserError("peft options / init_adapter need a PEFT method (method=lora, ...), not method=full")
        if self.num_examples <= 0:
            raise UserError(f"num_examples must be > 0, got {self.num_examples}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise UserError("set max_steps > 0 or num_train_epochs > 0")
        if self.eval_max_examples < 0:
            raise UserError(f"eval_max_examples must be >= 0, got {self.eval_max_examples}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise UserError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if not 0.0 <= self.average_last <= 1.0:
            raise UserError(f"average_last must be in [0, 1], got {self.average_last}")
        if not 0.0 <= self.replay_ratio < 1.0:
            raise UserError(f"replay_ratio must be in [0, 1), got {self.replay_ratio}")
        if self.replay_ratio > 0 and not self.replay_data:
            raise UserError("replay_ratio > 0 needs replay_data=<shard dir | .txt | .jsonl>")
        if not self.datasets:
            raise UserError("datasets is empty: name builders (arith_en, ...) or .jsonl files")

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.method]
