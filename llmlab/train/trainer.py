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
from llmlab.train import checkpoint as ckpt
from llmlab.train import distributed as D
from llmlab.train.config import TrainConfig
from llmlab.train.loss import linear_cross_entropy
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


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e) \
        or "out of memory" in str(e).lower()


def _oom_error(cfg: TrainConfig) -> UserError:
    return UserError(f"a batch of per_device_train_batch_size={cfg.per_device_train_batch_size} x "
                     f"max_length={cfg.max_length} does not fit in memory: lower per_device_train_batch_size "
                     "(raise gradient_accumulation_steps to keep the global batch), lower max_length, "
                     "or set gradient_checkpointing=true")


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_memory(model, cfg: TrainConfig, dtype_bytes: int = 4) -> int:
    """Rough peak bytes: weights + grads + 2 Adam moments, plus activations kept for backward.

    Per token and layer a pre-norm SwiGLU block keeps ~ 10 d + 3 f values (inputs of each matmul,
    norms, SiLU) and the attention (H x T scores when SDPA falls back to the math kernel); the
    fused loss keeps d per token. Checkpointing keeps only the block inputs.
    """
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    bt = cfg.per_device_train_batch_size * cfg.max_length
    per_layer = 10 * c.hidden_size + 3 * c.intermediate_size + c.num_attention_heads * cfg.max_length
    layers = c.hidden_size * c.num_hidden_layers + per_layer if cfg.gradient_checkpointing \
        else per_layer * c.num_hidden_layers
    return 16 * n + dtype_bytes * bt * (layers + 2 * c.hidden_size)


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


def train(cfg: TrainConfig, model, train_loader, val_loader=None, *, extra_files: dict[str, str] | None = None,
          model_flops_per_token: float | None = None) -> TrainResult:
    """Pretrain `model` (an llmlab Transformer) on `train_loader` batches; see the module docstring.

    train_loader / val_loader yield (x, y) LongTensors (per-rank batches) and have
    state_dict()/load_state_dict(); under torchrun each rank passes its own rank's loader.
    extra_files (name -> text, e.g. tokenizer files) are written into every saved model dir.
    """
    device = resolve_device(cfg.device)
    if cfg.fp16 and device.type != "cuda":
        raise UserError("fp16=true needs a CUDA GPU (fp16 loss scaling); on CPU use fp32 (default) or bf16=true")
    info = D.setup(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed + info.rank)

    raw = model.to(device)
    raw.train()
    raw.gradient_checkpointing = cfg.gradient_checkpointing
    need, have = estimate_memory(raw, cfg), _available_bytes(device)
    if have is not None and need > have:
        raise _oom_error(cfg)
    opt = build_optimizer(raw, cfg.learning_rate, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2),
                          cfg.adam_epsilon, cfg.decay_norms_and_embeddings)
    scaler = torch.amp.GradScaler("cuda") if cfg.fp16 else None
    amp_dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    guard = SpikeGuard(cfg.spike_threshold, cfg.spike_window, cfg.spike_min_steps)
    step, lr_mult, tokens_seen, spikes, rollbacks = 0, 1.0, 0, 0, 0

    def restore(path: Path, data_too: bool) -> None:
        nonlocal step, lr_mult, tokens_seen
        ts, rng = ckpt.load_checkpoint(path, raw, opt)
        step, lr_mult, tokens_seen = int(ts["step"]), float(ts["lr_mult"]), int(ts["tokens"])
        guard.load_state_dict(ts["spike_guard"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        if data_too:
            r = info.rank if info.rank < len(ts["loader_states"]) else 0
            if hasattr(train_loader, "load_state_dict") and ts["loader_states"][r] is not None:
                train_loader.load_state_dict(ts["loader_states"][r])
            ckpt.set_rng_state({"torch_cpu": rng[f"rank{r}.torch_cpu"],
                                **({"torch_cuda": rng[f"rank{r}.torch_cuda"]} if f"rank{r}.torch_cuda" in rng else {})},
                               ts["rng"][r])

    if cfg.resume_from_checkpoint:
        path = ckpt.latest_valid(out, log) if cfg.resume_from_checkpoint == "auto" else Path(cfg.resume_from_checkpoint)
        if path is not None:
            restore(path, data_too=True)
            if info.is_main:
                log.info(f"resumed from {path} at step {step}")
        elif info.is_main:
            log.info(f"no valid checkpoint in {out}: starting from scratch")

    fwd = ddp = raw
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = ddp = DDP(raw, device_ids=[info.local_rank] if device.type == "cuda" else None)
    if cfg.torch_compile:
        fwd = torch.compile(fwd)

    def loss_fn(x, y, module=None):
        m = module or fwd
        aux = getattr(raw, "aux_loss", lambda: None)  # MoE router losses of this forward (None if dense)
        if cfg.fused_cross_entropy and getattr(raw, "fused_ce_ok", True):
            loss = linear_cross_entropy(m(x, return_hidden=True), raw.lm_head.weight, y)
        else:
            logits = m(x)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        a = aux()
        return loss if a is None else loss + a

    reporter = Reporter(out, cfg.report_to, step) if info.is_main else None
    fpt = model_flops_per_token or flops_per_token(raw.config, cfg.max_length)
    peak = cfg.peak_flops or measure_matmul_flops(device, amp_dtype or torch.float32, seconds=0.3)
    global_tokens = cfg.per_device_train_batch_size * cfg.max_length * cfg.gradient_accumulation_steps * info.world_size
    batches = _Batches(train_loader, "train data")
    params = [p for p in raw.parameters() if p.requires_grad]
    bar = None
    if info.is_main and not cfg.disable_tqdm:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True)

    def save(at_step: int) -> None:
        # every rank's data position and RNG states travel to rank 0, which writes them all
        rng_t, rng_js = ckpt.rng_state()
        local = json.dumps({"loader": train_loader.state_dict() if hasattr(train_loader, "state_dict") else None,
                            "rng": rng_js}).encode()
        gathered = D.all_gather_bytes(local, info)
        rng_bytes = {k: D.all_gather_bytes(bytes(v.tolist()), info) for k, v in rng_t.items()}
        if info.is_main:
            per_rank = [json.loads(g) for g in gathered]
            state = {"step": at_step, "lr_mult": lr_mult, "tokens": tokens_seen, "spike_guard": guard.state_dict(),
                     "loader_states": [p["loader"] for p in per_rank], "rng": [p["rng"] for p in per_rank],
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "world_size": info.world_size, "config": asdict(cfg)}
            rng_tensors = {f"rank{r}.{k}": torch.tensor(list(b[r]), dtype=torch.uint8)
                           for k, b in rng_bytes.items() for r in range(info.world_size)}
            ckpt.save_checkpoint(out / f"checkpoint-{at_step}", raw, opt, state, rng_tensors, extra_files)
            ckpt.prune(out, cfg.save_total_limit)
        D.barrier(info)

    t_start = time.perf_counter()
    t_log, tok_log, loss_log, n_log = time.perf_counter(), 0, 0.0, 0
    last_loss, last_eval, evals = float("nan"), None, []
    try:
        while step < cfg.max_steps:
            lr = cfg.learning_rate * lr_mult * lr_factor(step, cfg.lr_scheduler_type, cfg.max_steps, cfg.warmup_steps,
                                                         cfg.min_lr_ratio, cfg.decay_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.gradient_accumulation_steps):
                x, y = batches.next()
                if x.shape[-1] > raw.config.max_position_embeddings:
                    raise UserError(f"batch of length {x.shape[-1]} exceeds the model's max_position_embeddings "
                                    f"({raw.config.max_position_embeddings}); lower max_length")
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = micro == cfg.gradient_accumulation_steps - 1
                sync = ddp.no_sync() if info.enabled and not last else contextlib.nullcontext()
                try:
                    with sync:
                        with autocast():
                            loss = loss_fn(x, y) / cfg.gradient_accumulation_steps
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                except RuntimeError as e:
                    if _is_oom(e):
                        raise _oom_error(cfg) from None
                    raise
                loss_sum += loss.detach()
            step_loss = float(D.all_reduce_mean(loss_sum, info))
            if scaler is not None:
                scaler.unscale_(opt)
            if cfg.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True))
            else:
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))

            if cfg.spike_guard != "off" and guard.is_spike(step_loss):
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.update()
                spikes += 1
                guard.consecutive += 1
                action, spike_step, mean, std = "skip", step, guard.mean, math.sqrt(guard.var)
                if cfg.spike_guard == "rollback":
                    path = ckpt.latest_valid(out, log)
                    if path is not None:
                        restore(path, data_too=False)
                        lr_mult *= cfg.spike_lr_factor
                        for _ in range(cfg.spike_skip_batches * cfg.gradient_accumulation_steps):
                            batches.next()
                        rollbacks += 1
                        action = f"rollback to {path.name}"
                if info.is_main:
                    log.warning(f"loss spike at step {spike_step}: {step_loss:.4f} (mean {mean:.4f}); {action}")
                    reporter.log("spike", spike_step, loss=step_loss, mean=mean, std=std, action=action)
                if guard.consecutive > cfg.max_spikes:
                    raise UserError(f"{guard.consecutive} loss spikes in a row at step {spike_step}: training diverged; "
                                    "lower learning_rate or check the data")
                continue

            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            if cfg.spike_guard != "off":
                guard.update(step_loss)
            step += 1
            tokens_seen += global_tokens
            last_loss = step_loss
            loss_log, n_log, tok_log = loss_log + step_loss, n_log + 1, tok_log + global_tokens

            if step % max(1, cfg.logging_steps) == 0 or step == cfg.max_steps:
                dt = time.perf_counter() - t_log
                tps = tok_log / dt if dt > 0 else 0.0
                util = mfu(tps / info.world_size, fpt, peak)
                if util > 1.0 and not cfg.peak_flops:  # the ceiling was measured while the machine was busy
                    peak = max(peak, measure_matmul_flops(device, amp_dtype or torch.float32, seconds=0.3))
                    util = mfu(tps / info.world_size, fpt, peak)
                if info.is_main:
                    reporter.log("train", step, loss=loss_log / n_log, lr=lr, grad_norm=grad_norm, tokens=tokens_seen,
                                 tokens_per_s=tps, mfu=util, elapsed_s=time.perf_counter() - t_start)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_log / n_log:.3f}", tok_s=f"{tps:.0f}", mfu=f"{util:.1%}")
                loss_log, n_log, tok_log, t_log = 0.0, 0, 0, time.perf_counter()
            if bar is not None:
                bar.update(1)

            t_aside = time.perf_counter()  # eval and save time is kept out of tokens/s
            do_eval = val_loader is not None and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == cfg.max_steps)
            if do_eval:
                last_eval = evaluate(raw, val_loader, cfg, lambda a, b: loss_fn(a, b, raw), autocast, info, device)
                evals.append({"step": step, **last_eval})
                if info.is_main:
                    reporter.log("eval", step, **last_eval)
            if (cfg.save_steps and step % cfg.save_steps == 0) or step == cfg.max_steps:
                save(step)
            t_log += time.perf_counter() - t_aside
            if cfg.debug_kill_at_step and step == cfg.debug_kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test: no cleanup at all

        if info.is_main:
            save_hf_dir(raw, out / "model", extra_files=extra_files)
        D.barrier(info)
    finally:
        if bar is not None:
            bar.close()
        if reporter is not None:
            reporter.close()
    seconds = time.perf_counter() - t_start
    return TrainResult(step, last_loss, last_eval and last_eval["val_loss"], last_eval and last_eval["val_bpb"],
                       tokens_seen, seconds, out, spikes, rollbacks, evals)
