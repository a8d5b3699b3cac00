"""The pretraining loop: `train(cfg, model, train_loader, val_loader)`.

One optimizer step = `gradient_accumulation_steps` micro-batches per rank; the loss of each is
divided by the accumulation count so the summed gradient is the mean over the global batch
(DDP then averages over ranks). Gradients are synchronised only on the last micro-batch
(`no_sync`, as nanoGPT does). The global-norm is clipped, the lr set from the schedule (a pure
function of the step), the loss checked by the spike guard, and only then does AdamW step.

Resume is exact: model, AdamW moments, step, lr multiplier, data positions of every rank, RNG
states of every rank, spike-guard statistics and GradScaler state are all restored, so the
weights after N steps are bit-identical whether or not the run was killed in between.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmlab.device import resolve_device
from llmlab.errors import UserError
from llmlab.log import get_logger
from llmlab.model.hf import save_hf_dir
from llmlab.model.transformer import flops_per_token
from llmlab.train import train_state as ckpt
from llmlab.train import distributed as D
from llmlab.train import tricks
from llmlab.train.config import TrainConfig
from llmlab.train.loss import linear_cross_entropy
from llmlab.train.memory import available_bytes, estimate_memory, is_oom, oom_error
from llmlab.train.mfu import measure_matmul_flops, mfu
from llmlab.train.optim import build_optimizer
from llmlab.train.reporting import Reporter
from llmlab.train.schedule import lr_factor
from llmlab.train.spike import SpikeGuard

log = get_logger("llmlab.train")


@dataclass
class TrainResult:
    step: int
    train_loss: float
    val_loss: float | None
    val_bpb: float | None
    tokens: int
    seconds: float
    output_dir: Path
    spikes: int = 0
    rollbacks: int = 0
    evals: list[dict] = field(default_factory=list)


class _Batches:
    """Endless iteration over a loader; re-iterates when it stops; errors if it yields nothing."""

    def __init__(self, loader, name: str):
        self.loader, self.name, self.it = loader, name, iter(loader)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            try:
                return next(self.it)
            except StopIteration:
                raise UserError(f"{self.name}: the data loader yielded no batches (empty data)") from None


def evaluate(model, val_loader, cfg: TrainConfig, loss_fn, autocast, info: D.DistInfo, device) -> dict:
    """Mean token loss over up to `eval_batches` validation batches (all ranks), and bits per byte."""
    was_training = model.training
    model.eval()
    saved = val_loader.state_dict() if hasattr(val_loader, "state_dict") else None
    total = torch.zeros(2, dtype=torch.float64)
    limit = cfg.eval_batches or None
    if hasattr(val_loader, "__len__"):  # endless loaders (llmlab.data's) wrap around: stop at one pass
        limit = min(limit or len(val_loader), len(val_loader))
    with torch.no_grad(), autocast():
        for i, (x, y) in enumerate(val_loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            n = (y != -100).sum()
            total += torch.tensor([float(loss_fn(x, y)) * float(n), float(n)], dtype=torch.float64)
    if saved is not None:
        val_loader.load_state_dict(saved)
    model.train(was_training)
    if info.enabled:
        torch.distributed.all_reduce(total)
    if total[1] == 0:
        raise UserError("validation data yielded no tokens (empty val set)")
    loss = float(total[0] / total[1])
    bpb = loss / math.log(2) / cfg.bytes_per_token if cfg.bytes_per_token > 0 else None
    return {"val_loss": loss, "val_bpb": bpb, "val_tokens": int(total[1])}


class _Run:
    """The state of one pretraining run and its pieces as named steps: setup, resume, one
    accumulated step, the spike guard, logging, evaluation and checkpointing. `train` is the loop."""

    def __init__(self, cfg: TrainConfig, model, train_loader, val_loader, extra_files, model_flops_per_token):
        device = resolve_device(cfg.device)
        if cfg.fp16 and device.type != "cuda":
            raise UserError("fp16=true needs a CUDA GPU (fp16 loss scaling); on CPU use fp32 (default) or bf16=true")
        self.info = info = D.setup(device)
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        self.cfg, self.device, self.out = cfg, device, Path(cfg.output_dir)
        self.train_loader, self.val_loader, self.extra_files = train_loader, val_loader, extra_files
        torch.manual_seed(cfg.seed + info.rank)
        self.raw = raw = model.to(device)
        raw.train()
        raw.gradient_checkpointing = cfg.gradient_checkpointing
        tricks.apply(raw, cfg)  # init scheme, GLM embedding-grad shrink, selective recomputation
        need, have = estimate_memory(raw, cfg), available_bytes(device)
        if have is not None and need > have:
            raise oom_error(cfg)
        self.opt = build_optimizer(raw, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2),
                                   cfg.adam_epsilon, cfg.decay_norms_and_embeddings, cfg.optim)
        self.stopper = tricks.EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_threshold)
        self.best_state = None
        self.scaler = torch.amp.GradScaler("cuda") if cfg.fp16 else None
        self.amp_dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None
        self.guard = SpikeGuard(cfg.spike_threshold, cfg.spike_window, cfg.spike_min_steps)
        self.step, self.lr_mult, self.tokens_seen, self.spikes, self.rollbacks = 0, 1.0, 0, 0, 0
        self.resume()
        self.fwd = self.ddp = raw
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.fwd = self.ddp = DDP(raw, device_ids=[info.local_rank] if device.type == "cuda" else None)
        if cfg.torch_compile:
            self.fwd = torch.compile(self.fwd)
        self.reporter = Reporter(self.out, cfg.report_to, self.step) if info.is_main else None
        self.fpt = model_flops_per_token or flops_per_token(raw.config, cfg.max_length)
        self.peak = cfg.peak_flops or measure_matmul_flops(device, self.amp_dtype or torch.float32, seconds=0.3)
        self.global_tokens = (cfg.per_device_train_batch_size * cfg.max_length * cfg.gradient_accumulation_steps
                              * info.world_size)
        self.batches = _Batches(train_loader, "train data")
        self.params = [p for p in raw.parameters() if p.requires_grad]
        self.bar = None
        if info.is_main and not cfg.disable_tqdm:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loss_fn(self, x, y, module=None):
        m = module or self.fwd
        if isinstance(x, dict):  # an objective's batch (llmlab.train.objectives): the forward's kwargs
            rest = {k: v for k, v in x.items() if k != "input_ids"}
            m, x = functools.partial(m, **rest), x["input_ids"]
        aux = getattr(self.raw, "aux_loss", lambda: None)  # MoE router losses of this forward (None if dense)
        if self.cfg.fused_cross_entropy and getattr(self.raw, "fused_ce_ok", True):
            loss = linear_cross_entropy(m(x, return_hidden=True), self.raw.lm_head.weight, y)
        else:
            logits = m(x)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        a = aux()
        return loss if a is None else loss + a

    # ------------------------------------------------------------------ checkpoints
    def restore(self, path: Path, data_too: bool) -> None:
        ts, rng = ckpt.load_checkpoint(path, self.raw, self.opt)
        self.step, self.lr_mult, self.tokens_seen = int(ts["step"]), float(ts["lr_mult"]), int(ts["tokens"])
        self.guard.load_state_dict(ts["spike_guard"])
        if "early_stopping" in ts:
            self.stopper.load_state_dict(ts["early_stopping"])
        if self.scaler is not None and ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        if data_too:
            r = self.info.rank if self.info.rank < len(ts["loader_states"]) else 0
            if hasattr(self.train_loader, "load_state_dict") and ts["loader_states"][r] is not None:
                self.train_loader.load_state_dict(ts["loader_states"][r])
            ckpt.set_rng_state({"torch_cpu": rng[f"rank{r}.torch_cpu"],
                                **({"torch_cuda": rng[f"rank{r}.torch_cuda"]} if f"rank{r}.torch_cuda" in rng else {})},
                               ts["rng"][r])

    def resume(self) -> None:
        cfg, out = self.cfg, self.out
        if not cfg.resume_from_checkpoint:
            return
        path = ckpt.latest_valid(out, log) if cfg.resume_from_checkpoint == "auto" else Path(cfg.resume_from_checkpoint)
        if path is not None:
            self.restore(path, data_too=True)
            if self.info.is_main:
                log.info(f"resumed from {path} at step {self.step}")
        elif self.info.is_main:
            log.info(f"no valid checkpoint in {out}: starting from scratch")

    def save(self, at_step: int) -> None:
        # every rank's data position and RNG states travel to rank 0, which writes them all
        info, loader = self.info, self.train_loader
        rng_t, rng_js = ckpt.rng_state()
        local = json.dumps({"loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
                            "rng": rng_js}).encode()
        gathered = D.all_gather_bytes(local, info)
        rng_bytes = {k: D.all_gather_bytes(bytes(v.tolist()), info) for k, v in rng_t.items()}
        if info.is_main:
            per_rank = [json.loads(g) for g in gathered]
            state = {"step": at_step, "lr_mult": self.lr_mult, "tokens": self.tokens_seen,
                     "spike_guard": self.guard.state_dict(), "early_stopping": self.stopper.state_dict(),
                     "loader_states": [p["loader"] for p in per_rank], "rng": [p["rng"] for p in per_rank],
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "world_size": info.world_size, "config": asdict(self.cfg)}
            rng_tensors = {f"rank{r}.{k}": torch.tensor(list(b[r]), dtype=torch.uint8)
                           for k, b in rng_bytes.items() for r in range(info.world_size)}
            ckpt.save_checkpoint(self.out / f"checkpoint-{at_step}", self.raw, self.opt, state, rng_tensors,
                                 self.extra_files)
            ckpt.prune(self.out, self.cfg.save_total_limit)
        D.barrier(info)

    # ------------------------------------------------------------------ one optimizer step
    def set_lr(self) -> float:
        cfg = self.cfg
        lr = cfg.learning_rate * self.lr_mult * lr_factor(self.step, cfg.lr_scheduler_type, cfg.max_steps,
                                                          cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def accumulate(self) -> float:
        """Forward/backward over gradient_accumulation_steps micro-batches -> the step's mean loss (all ranks)."""
        cfg, raw, info = self.cfg, self.raw, self.info
        loss_sum = torch.zeros((), device=self.device)
        ga = self.accum = tricks.rampup_accumulation(self.step, cfg.gradient_accumulation_steps,
                                                     cfg.batch_size_rampup_start, cfg.batch_size_rampup_steps)
        for micro in range(ga):
            x, y = self.batches.next()
            if x.shape[-1] > raw.config.max_position_embeddings:
                raise UserError(f"batch of length {x.shape[-1]} exceeds the model's max_position_embeddings "
                                f"({raw.config.max_position_embeddings}); lower max_length")
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == ga - 1
            sync = self.ddp.no_sync() if info.enabled and not last else contextlib.nullcontext()
            try:
                with sync:
                    with self.autocast():
                        loss = self.loss_fn(x, y) / ga
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            except RuntimeError as e:
                if is_oom(e):
                    raise oom_error(cfg) from None
                raise
            loss_sum += loss.detach()
        return float(D.all_reduce_mean(loss_sum, info))

    def clip(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if self.cfg.max_grad_norm > 0:
            return float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm, foreach=True))
        return float(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))

    def on_spike(self, step_loss: float) -> None:
        """Drop this step's gradients; with spike_guard=rollback go back to the last checkpoint."""
        cfg, guard = self.cfg, self.guard
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()
        self.spikes += 1
        guard.consecutive += 1
        action, spike_step, mean, std = "skip", self.step, guard.mean, math.sqrt(guard.var)
        if cfg.spike_guard == "rollback":
            path = ckpt.latest_valid(self.out, log)
            if path is not None:
                self.restore(path, data_too=False)
                self.lr_mult *= cfg.spike_lr_factor
                for _ in range(cfg.spike_skip_batches * cfg.gradient_accumulation_steps):
                    self.batches.next()
                self.rollbacks += 1
                action = f"rollback to {path.name}"
        if self.info.is_main:
            log.warning(f"loss spike at step {spike_step}: {step_loss:.4f} (mean {mean:.4f}); {action}")
            self.reporter.log("spike", spike_step, loss=step_loss, mean=mean, std=std, action=action)
        if guard.consecutive > cfg.max_spikes:
            raise UserError(f"{guard.consecutive} loss spikes in a row at step {spike_step}: training diverged; "
                            "lower learning_rate or check the data")

    def apply(self, step_loss: float) -> None:
        """The optimizer step proper, and the counters that move with it."""
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.cfg.spike_guard != "off":
            self.guard.update(step_loss)
        self.step += 1
        self.tokens_seen += self.step_tokens()

    def step_tokens(self) -> int:
        return self.global_tokens * self.accum // self.cfg.gradient_accumulation_steps

    def early_stop(self, val_loss: float) -> bool:
        """Early stopping: keep a copy of the best weights; True when patience ran out."""
        stop = self.stopper.update(self.step, val_loss)
        if self.stopper.best_step == self.step:
            self.best_state = {k: v.detach().clone() for k, v in self.raw.state_dict().items()}
        if stop and self.info.is_main:
            log.info(f"early stopping at step {self.step}: no val-loss gain for {self.stopper.patience} "
                     f"evaluations; keeping step {self.stopper.best_step} (val_loss {self.stopper.best:.4f})")
        return stop

    def log_train(self, lr: float, grad_norm: float, window: dict) -> None:
        """Every logging_steps: mean loss, tokens/s and MFU over the window since the last log."""
        dt = time.perf_counter() - window["t"]
        tps = window["tokens"] / dt if dt > 0 else 0.0
        world = self.info.world_size
        util = mfu(tps / world, self.fpt, self.peak)
        if util > 1.0 and not self.cfg.peak_flops:  # the ceiling was measured while the machine was busy
            self.peak = max(self.peak, measure_matmul_flops(self.device, self.amp_dtype or torch.float32, seconds=0.3))
            util = mfu(tps / world, self.fpt, self.peak)
        loss = window["loss"] / window["n"]
        if self.info.is_main:
            self.reporter.log("train", self.step, loss=loss, lr=lr, grad_norm=grad_norm, tokens=self.tokens_seen,
                              tokens_per_s=tps, mfu=util, elapsed_s=time.perf_counter() - window["start"])
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:.0f}", mfu=f"{util:.1%}")
        window.update(loss=0.0, n=0, tokens=0, t=time.perf_counter())

    def evaluate(self) -> dict:
        res = evaluate(self.raw, self.val_loader, self.cfg, lambda a, b: self.loss_fn(a, b, self.raw), self.autocast,
                       self.info, self.device)
        if self.info.is_main:
            self.reporter.log("eval", self.step, **res)
        return res

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.reporter is not None:
            self.reporter.close()


def train(cfg: TrainConfig, model, train_loader, val_loader=None, *, extra_files: dict[str, str] | None = None,
          model_flops_per_token: float | None = None) -> TrainResult:
    """Pretrain `model` (an llmlab Transformer) on `train_loader` batches; see the module docstring.

    train_loader / val_loader yield (x, y) LongTensors (per-rank batches) and have
    state_dict()/load_state_dict(); under torchrun each rank passes its own rank's loader.
    extra_files (name -> text, e.g. tokenizer files) are written into every saved model dir.
    """
    run = _Run(cfg, model, train_loader, val_loader, extra_files, model_flops_per_token)
    t_start = time.perf_counter()
    window = {"start": t_start, "t": t_start, "tokens": 0, "loss": 0.0, "n": 0}
    last_loss, last_eval, evals = float("nan"), None, []
    try:
        while run.step < cfg.max_steps:
            lr = run.set_lr()
            step_loss = run.accumulate()
            grad_norm = run.clip()
            if cfg.spike_guard != "off" and run.guard.is_spike(step_loss):
                run.on_spike(step_loss)
                continue
            run.apply(step_loss)
            step, last_loss = run.step, step_loss
            window.update(loss=window["loss"] + step_loss, n=window["n"] + 1, tokens=window["tokens"] + run.step_tokens())
            if step % max(1, cfg.logging_steps) == 0 or step == cfg.max_steps:
                run.log_train(lr, grad_norm, window)
            if run.bar is not None:
                run.bar.update(1)
            t_aside = time.perf_counter()  # eval and save time is kept out of tokens/s
            if val_loader is not None and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == cfg.max_steps):
                last_eval = run.evaluate()
                evals.append({"step": step, **last_eval})
                stop = cfg.early_stopping_patience > 0 and run.early_stop(last_eval["val_loss"])
            else:
                stop = False
            if (cfg.save_steps and step % cfg.save_steps == 0) or step == cfg.max_steps or stop:
                run.save(step)
            window["t"] += time.perf_counter() - t_aside
            if cfg.debug_kill_at_step and step == cfg.debug_kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test: no cleanup at all
            if stop:
                break
        if run.best_state is not None:  # load_best_model_at_end: the saved model is the best evaluation's
            run.raw.load_state_dict(run.best_state)
        if run.info.is_main:
            save_hf_dir(run.raw, run.out / "model", extra_files=extra_files)
        D.barrier(run.info)
    finally:
        run.close()
    seconds = time.perf_counter() - t_start
    return TrainResult(run.step, last_loss, last_eval and last_eval["val_loss"], last_eval and last_eval["val_bpb"],
                       run.tokens_seen, seconds, run.out, run.spikes, run.rollbacks, evals)
