"""Training configs: `TrainingBase` holds every knob pretraining and SFT share (HF
`TrainingArguments` names), validated once; `TrainConfig` (pretraining) adds its own knobs and
`llmlab.finetune.sft_config.SftConfig` changes defaults only. Bad values raise UserError."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from llmlab.errors import UserError

REPORTERS = {"jsonl", "tensorboard", "png"}


@dataclass
class TrainingBase:
    output_dir: str = field(default="runs/train", metadata={"help": "checkpoints, metrics.jsonl, tb/, loss.png"})
    # optimisation (AdamW, Loshchilov & Hutter 2019); defaults follow GPT-3 / LLaMA
    learning_rate: Optional[float] = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = field(default=0.95, metadata={"help": "0.95 as GPT-3/LLaMA (0.999 is HF's default)"})
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "global-norm clipping threshold; 0 = off"})
    # schedule
    lr_scheduler_type: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr / peak lr (cosine, linear, wsd); LLaMA: 0.1"})
    max_steps: int = 100
    # batch
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = field(default=256, metadata={"help": "tokens per training window (sequence length)"})
    # precision / speed
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (slow on most CPUs)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    device: str = "auto"
    seed: int = 42
    # evaluation / logging / saving
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps (0 = only at the end)"})
    logging_steps: int = 10
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only at the end)"})
    save_total_limit: int = field(default=2, metadata={"help": "keep this many newest checkpoints (0 = all)"})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "a checkpoint dir, or 'auto' = newest valid one in output_dir"})
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard", "png"],
                                 metadata={"help": "any of jsonl, tensorboard, png"})
    disable_tqdm: bool = False

    def __post_init__(self):
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("warmup_steps", "eval_steps", "save_steps", "logging_steps", "weight_decay",
                     "max_grad_norm", "save_total_limit"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.adam_beta1 < 1.0 or not 0.0 <= self.adam_beta2 < 1.0:
            raise UserError("adam_beta1 and adam_beta2 must be in [0, 1)")
        bad = set(self.report_to) - REPORTERS
        if bad:
            raise UserError(f"report_to: unknown {sorted(bad)} (use jsonl, tensorboard, png)")


@dataclass
class TrainConfig(TrainingBase):
    """Pretraining: the shared knobs plus the ones only `llmlab train` has."""
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    decay_norms_and_embeddings: bool = field(
        default=False, metadata={"help": "false: no weight decay on norm gains, biases and embeddings"})
    decay_ratio: float = field(default=0.2, metadata={"help": "wsd: fraction of max_steps spent in the final decay"})
    fp16: bool = field(default=False, metadata={"help": "fp16 autocast + GradScaler loss scaling (CUDA only)"})
    torch_compile: bool = False
    fused_cross_entropy: bool = field(default=True, metadata={"help": "chunked LM-head + CE, no full logits"})
    eval_batches: int = field(default=8, metadata={"help": "validation batches per evaluation (0 = all)"})
    bytes_per_token: float = field(default=0.0, metadata={"help": "for bits-per-byte; 0 = not reported"})
    peak_flops: float = field(default=0.0, metadata={"help": "MFU denominator (FLOP/s); 0 = measure a matmul"})
    # loss-spike guard (PaLM: restart before the spike and skip the data around it)
    spike_guard: Literal["off", "skip", "rollback"] = "skip"
    spike_threshold: float = field(default=6.0, metadata={"help": "spike = loss > mean + k * std of recent losses"})
    spike_window: int = field(default=50, metadata={"help": "EMA horizon (steps) of the loss mean/std"})
    spike_min_steps: int = field(default=20, metadata={"help": "no detection before this many good steps"})
    spike_skip_batches: int = field(default=0, metadata={"help": "rollback: extra batches skipped after the bad one"})
    spike_lr_factor: float = field(default=1.0, metadata={"help": "rollback: multiply lr by this (OPT lowers it)"})
    max_spikes: int = field(default=20, metadata={"help": "stop with an error after this many spikes in a row"})
    debug_kill_at_step: int = field(default=0, metadata={"help": "testing: SIGKILL itself after this step"})
    # distributed strategies beyond DDP (llmlab.distributed; docs/distributed.md)
    strategy: Literal["ddp", "zero1", "zero2", "fsdp", "cp", "ep"] = field(
        default="ddp", metadata={"help": "ddp (replicas) | zero1 (shard Adam) | zero2 (+grads) | fsdp (ZeRO-3) | "
                                         "cp (context parallel: ring attention) | ep (expert parallel MoE)"})
    fsdp_param_dtype: Literal["", "bf16", "fp16", "fp32"] = field(
        default="", metadata={"help": "fsdp: compute dtype of gathered params ('' = as stored, fp32)"})
    fsdp_cpu_offload: bool = field(default=False, metadata={"help": "fsdp: shards and Adam step on the CPU"})
    deepspeed: str = field(default="", metadata={"help": "a DeepSpeed JSON config (configs/ds_zero*.json)"})
    # pretraining objective (llmlab.train.objectives; docs/train.md "Objectives")
    objective: str = field(default="causal_lm", metadata={
        "help": "causal_lm | prefix_lm | mlm | span_corruption | ul2 | fim"})
    architecture: Literal["", "decoder", "prefix_decoder", "encoder_decoder"] = field(default="", metadata={
        "help": "'' = the objective's natural one: decoder (causal_lm, fim), prefix_decoder (prefix_lm, mlm, "
                "span_corruption, ul2); encoder_decoder = T5-style"})
    noise_density: float = field(default=0.15, metadata={"help": "span_corruption: fraction of tokens dropped"})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "span_corruption: mean span length"})
    num_sentinels: int = field(default=100, metadata={"help": "span_corruption/ul2: sentinel tokens added"})
    mlm_probability: float = field(default=0.15, metadata={"help": "mlm: fraction of tokens selected"})
    ul2_mixture: str = field(default="ul2", metadata={"help": "ul2: ul2 (7 denoisers uniform) | ul2r (S 50/R 25/X 25)"})
    fim_rate: float = field(default=0.5, metadata={"help": "fim: fraction of windows rearranged"})
    fim_spm_rate: float = field(default=0.5, metadata={"help": "fim: fraction of those in SPM order (else PSM)"})

    # optimizers and training tricks (llmlab.train.optimizers / tricks; docs/train.md)
    optim: Literal["adamw", "adam", "adamax", "adafactor"] = field(
        default="adamw", metadata={"help": "adamw (torch, fused) | adam (L2 decay) | adamax | adafactor (factored)"})
    weight_init: Literal["default", "xavier_uniform", "xavier_normal", "t5", "small"] = field(
        default="default", metadata={"help": "weight init before step 0 (default = GPT-2 style N(0, 0.02))"})
    embedding_grad_shrink: float = field(default=1.0, metadata={"help": "GLM-130B: scale embedding grads (0.1); 1 = off"})
    selective_recompute: bool = field(default=False, metadata={"help": "recompute attention only in backward"})
    batch_size_rampup_start: int = field(
        default=0, metadata={"help": "micro-batches per step at step 0, ramped to gradient_accumulation_steps; 0 = off"})
    batch_size_rampup_steps: int = field(default=0, metadata={"help": "steps of the linear batch-size ramp"})
    early_stopping_patience: int = field(
        default=0, metadata={"help": "stop after N evals without val-loss gain, keep the best weights; 0 = off"})
    early_stopping_threshold: float = field(default=0.0, metadata={"help": "least val-loss drop that counts as a gain"})

    def __post_init__(self):
        super().__post_init__()
        if self.learning_rate is None:
            raise UserError("learning_rate must be set for pretraining")
        for name in ("max_steps",):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("eval_batches", "spike_skip_batches"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bf16 and self.fp16:
            raise UserError("bf16 and fp16 are exclusive: pick one")
        if not 0.0 <= self.decay_ratio <= 1.0:
            raise UserError(f"decay_ratio must be in [0, 1], got {self.decay_ratio}")
        if self.objective != "causal_lm" or self.architecture:
            from llmlab.train.objectives.setup import check_config
            check_config(self)

        if not 0.0 < self.embedding_grad_shrink <= 1.0:
            raise UserError(f"embedding_grad_shrink must be in (0, 1], got {self.embedding_grad_shrink}")
        for name in ("batch_size_rampup_start", "batch_size_rampup_steps", "early_stopping_patience"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.early_stopping_patience and not self.eval_steps:
            raise UserError("early_stopping_patience needs eval_steps > 0 (it counts evaluations)")
