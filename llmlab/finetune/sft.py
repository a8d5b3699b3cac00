"""Supervised fine-tuning (instruction tuning) of a causal LM, full or with any PEFT method.

The SFT stage of InstructGPT (Ouyang et al. 2022) / FLAN (Wei et al. 2022): next-token
cross-entropy on conversations, counted on the assistant's tokens only (`sft_data.py`), so the
model learns to answer, not to imitate prompts. Everything else is the pretraining trainer's:
AdamW with its weight-decay groups (`train.optim`), warmup + decay schedule as a pure function of
the step (`train.schedule`), global-norm clipping, atomic verified checkpoints (`sft_state.py`
on top of `train.train_state`), metrics.jsonl / TensorBoard / loss.png (`train.reporting`).

Loss normalisation: one optimizer step covers `gradient_accumulation_steps` micro-batches; the
loss is the sum over all their target tokens divided by the total count, so every assistant token
weighs the same whatever micro-batch it lands in (averaging per micro-batch over-weights short
replies: the gradient-accumulation bug fixed in HF transformers 4.46).

`sft(cfg)` trains and returns an SftResult (the model stays in memory); `run_sft(cfg)` is the
same for the CLI and the speedrun, returning the saved directory: `output_dir/model` (full SFT:
an HF model dir with tokenizer + chat template) or `output_dir/adapter` (PEFT, plus tokenizer).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError
from llmlab.finetune.packing import allow_block_masks, document_mask
from llmlab.finetune.sft_build import build_data, build_model, unwrap  # noqa: F401  (re-exported)
from llmlab.finetune.sft_config import SftConfig
from llmlab.log import get_logger

log = get_logger("llmlab.sft")


@dataclass
class SftResult:
    output: Path
    step: int
    train_loss: float
    eval_loss: float | None
    seconds: float
    s_per_step: float
    trainable: int
    total: int
    data: dict
    model: nn.Module = field(repr=False, default=None)
    tokenizer: object = field(repr=False, default=None)


def token_loss_sum(model: nn.Module, core: nn.Module, batch: dict, prefix_n: int = 0) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (labels != -100)."""
    from llmlab.train.loss import linear_cross_entropy

    x, y = batch["input_ids"], batch["labels"]
    kw = {}
    if "doc_ids" in batch:  # packed rows: block-diagonal causal mask, positions restart per example
        mask, pos = document_mask(batch["doc_ids"]), batch["position_ids"]
        if prefix_n:  # every example sees the whole prefix, whose positions come first
            mask = torch.cat([mask.new_ones(*mask.shape[:3], prefix_n), mask], dim=-1)
            pos = pos + prefix_n
        kw = {"attention_mask": mask, "position_ids": pos}
    head = core.lm_head
    if type(head) is nn.Linear and head.weight.requires_grad:
        # full SFT: the fused chunked head + CE, no (tokens x vocab) logits kept for backward
        n = (y != -100).sum()
        return linear_cross_entropy(model(x, return_hidden=True, **kw), head.weight, y) * n
    # frozen head: plain logits, so autograd skips the head's weight gradient (the fused loss computes it)
    logits = model(x, **kw)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")


@torch.no_grad()
def heldout_loss(model, core, rows: list[dict], batch_size: int, pad_id: int, device) -> float | None:
    from llmlab.finetune.sft_data import collate

    if not rows:
        return None
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in collate(rows[i:i + batch_size], pad_id).items()}
        total += float(token_loss_sum(model, core, b))
        n += int((b["labels"] != -100).sum())
    model.train(was)
    return total / max(n, 1)


def chat_tokenizer(tok):
    """A copy whose chat template is set (ChatML if it had none) and whose eos is the end-of-turn
    token, so generation with the saved model stops at the end of a reply."""
    from llmlab.finetune.sft_data import end_of_turn
    from llmlab.tokenizer.chat import CHATML

    t = copy.copy(tok)
    t.chat_template = t.chat_template or CHATML
    eot = end_of_turn(t)
    if eot and eot in t.special:
        t.eos_token = eot
    return t


def tokenizer_files(tok) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as d:
        out = tok.save(Path(d) / "tok")
        return {f.name: f.read_text(encoding="utf-8") for f in out.iterdir()}


def export(model, core, tok, cfg: SftConfig) -> Path:
    from llmlab.finetune.methods import save_peft
    from llmlab.model.hf import save_hf_dir

    chat_tok = chat_tokenizer(tok)
    files = tokenizer_files(chat_tok)
    out = Path(cfg.output_dir)
    if cfg.method == "full":
        core.config.eos_token_id = chat_tok.eos_id
        return save_hf_dir(core, out / "model", extra_files=files)
    path = save_peft(model, out / "adapter")
    for name, text in files.items():
        (path / name).write_text(text, encoding="utf-8")
    return path


def _check_fits(cfg: SftConfig, model, core) -> int:
    """The number of virtual tokens (prefix / prompt tuning); a clear error if rows cannot fit the model."""
    from llmlab.finetune.prefix import PrefixModel
    from llmlab.finetune.prompt import SoftPromptModel
    n_virtual = model.cfg.num_virtual_tokens if isinstance(model, (PrefixModel, SoftPromptModel)) else 0
    if cfg.max_length + n_virtual > core.config.max_position_embeddings:
        raise UserError(f"max_length={cfg.max_length} (+{n_virtual} virtual tokens) exceeds the model's context "
                        f"window ({core.config.max_position_embeddings})")
    if cfg.packing and isinstance(model, SoftPromptModel):
        raise UserError(f"packing=true does not work with method={cfg.method}: the soft prompt sits in front of a "
                        "row, so only its first example would see it; use packing=false")
    return n_virtual


def _resume(cfg: SftConfig, out: Path, model, opt, loader, avg) -> int:
    """Load the newest (or the named) checkpoint into model, optimizer, loader and the tail average;
    the step to go on from (0 when there is none)."""
    from llmlab.finetune import sft_state as S
    resume = S.find_resume(out, cfg.resume_from_checkpoint, log)
    if resume is None:
        return 0
    ts = S.load_state(resume, model, opt)
    if ts.get("method") != cfg.method:
        raise UserError(f"checkpoint {resume} was written by method={ts.get('method')}, not {cfg.method}")
    loader.load_state_dict(ts["loader"])
    if avg is not None and ts.get("average_n"):
        avg.load(S.load_tensors(Path(resume) / "average.safetensors"), int(ts["average_n"]))
    log.info(f"resumed from {resume} at step {ts['step']}")
    return int(ts["step"])


def sft(cfg: SftConfig, *, stop_at_step: int | None = None, progress: bool = True) -> SftResult:
    """Train per `cfg`; see the module docstring. stop_at_step: stop there (after its checkpoint)
    as if killed, for resume tests."""
    from tqdm.auto import tqdm

    from llmlab.device import resolve_device
    from llmlab.finetune import sft_state as S
    from llmlab.finetune.prefix import PrefixModel
    from llmlab.finetune.targets import count_trainable
    from llmlab.train.averaging import TailAverage, average_start
    from llmlab.train.optim import build_optimizer
    from llmlab.train.reporting import Reporter
    from llmlab.train.schedule import lr_factor

    device = resolve_device(cfg.device)
    model, tok, _ = build_model(cfg)
    core = unwrap(model)
    n_virtual = _check_fits(cfg, model, core)
    allow_block_masks(core)
    core.gradient_checkpointing = cfg.gradient_checkpointing
    loader, eval_rows, stats = build_data(cfg, tok, core.config.vocab_size, progress)
    model.to(device).train()
    trainable, total = count_trainable(model)
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon)
    ga = cfg.gradient_accumulation_steps
    max_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * len(loader) / ga))
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * max_steps)
    prefix_n = n_virtual if isinstance(model, PrefixModel) else 0
    out = Path(cfg.output_dir)
    avg = TailAverage(model, average_start(max_steps, cfg.average_last)) if cfg.average_last > 0 else None
    step = _resume(cfg, out, model, opt, loader, avg)
    reporter = Reporter(out, cfg.report_to, step)
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.bf16 else contextlib.nullcontext
    params = [p for p in model.parameters() if p.requires_grad]
    log.info(f"sft {cfg.method}: {trainable:,} of {total:,} parameters train; {stats}; {max_steps} steps")

    def save(at: int) -> None:
        S.save_and_prune(out, at, cfg.save_total_limit, model, opt,
                         {"step": at, "loader": loader.state_dict(), "method": cfg.method,
                          "config": dataclasses.asdict(cfg), "average_n": avg.n if avg else 0},
                         avg.mean if avg and avg.n else None)

    bar = tqdm(total=max_steps, initial=step, desc=f"sft {cfg.method}", disable=cfg.disable_tqdm or not progress)
    times, last_loss, eval_loss, t0 = [], float("nan"), None, time.perf_counter()
    try:
        while step < max_steps:
            t = time.perf_counter()
            lr = cfg.lr * lr_factor(step, cfg.lr_scheduler_type, max_steps, warmup, cfg.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            micro = [{k: v.to(device) for k, v in loader.next().items()} for _ in range(ga)]
            n_tok = max(1, sum(int((b["labels"] != -100).sum()) for b in micro))
            loss_sum = 0.0
            for b in micro:
                with amp():
                    loss = token_loss_sum(model, core, b, prefix_n) / n_tok
                loss.backward()
                loss_sum += float(loss.detach())
            if cfg.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            else:
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if avg is not None:
                avg.update(step)
                if step == max_steps:  # the last step's eval, checkpoint and export see the average
                    avg.copy_to_model()
            times.append(time.perf_counter() - t)
            last_loss = loss_sum
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            if step % max(1, cfg.logging_steps) == 0 or step == max_steps:
                reporter.log("train", step, loss=loss_sum, lr=lr, grad_norm=grad_norm, tokens=n_tok,
                             epoch=loader.epoch, elapsed_s=time.perf_counter() - t0)
            if eval_rows and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == max_steps):
                eval_loss = heldout_loss(model, core, eval_rows, cfg.per_device_train_batch_size, loader.pad_id, device)
                reporter.log("eval", step, val_loss=eval_loss)
            if cfg.save_strategy == "steps" and ((cfg.save_steps and step % cfg.save_steps == 0) or step == max_steps):
                save(step)
            if stop_at_step is not None and step >= stop_at_step:
                break
    finally:
        bar.close()
        reporter.close()
    seconds = time.perf_counter() - t0
    done = step >= max_steps
    output = export(model, core, tok, cfg) if done else out
    return SftResult(output, step, last_loss, eval_loss, seconds, statistics.median(times) if times else 0.0,
                     trainable, total, stats, model, tok)


def speedrun_sft_config(model_dir: str | Path, output_dir: str | Path, quick: bool = False, **overrides) -> SftConfig:
    """The speedrun's SFT settings (configs/sft_speedrun.yaml): full SFT of a small pretrained model,
    packed rows. The speedrun overrides `datasets` with its templated instruction data and sets
    max_steps (llmlab/speedrun/pipeline.py). quick: a few tiny steps (tests)."""
    from llmlab.checkpoint import read_json

    ctx = int(read_json(Path(model_dir) / "config.json").get("max_position_embeddings", 256))
    kw = dict(model=str(model_dir), output_dir=str(output_dir), method="full", packing=True,
              max_length=min(256, ctx), per_device_train_batch_size=8, learning_rate=3e-3, max_steps=100,
              num_examples=500, eval_max_examples=64, save_strategy="no", report_to=["jsonl", "png"])
    if quick:
        kw.update(num_examples=20, max_steps=3, per_device_train_batch_size=4, eval_max_examples=8,
                  report_to=["jsonl"], disable_tqdm=True)
    return SftConfig(**{**kw, **overrides})


def run_sft(cfg: SftConfig) -> Path:
    """Fine-tune per `cfg` and return the saved model dir (full) or adapter dir (PEFT)."""
    from llmlab.device import setup_threads

    setup_threads()
    res = sft(cfg)
    log.info(f"sft {cfg.method}: {res.step} steps in {res.seconds:.0f}s, train loss {res.train_loss:.3f}"
             + (f", held-out loss {res.eval_loss:.3f}" if res.eval_loss is not None else "") + f" -> {res.output}")
    return res.output
