"""Pipeline parallel with `torch.distributed.pipelining` (GPipe: Huang et al. 2019; 1F1B:
Narayanan et al. 2019, PipeDream-Flush).

The layers are cut into p contiguous stages, one per rank; a batch is cut into m micro-batches
that flow through the stages. GPipe runs all forwards, then all backwards; 1F1B alternates once
the pipe is full, holding at most p micro-batches of activations instead of m. Both idle

    bubble = (p - 1) / (m + p - 1)          (llmlab.calc.pipeline)

        time ->   F1 F2 F3 F4 .. .. .. B4 B3 B2 B1          stage 0 (GPipe, m = 4, p = 2)
                  .. F1 F2 F3 F4 B4 B3 B2 B1 ..             stage 1

Measured bubble of a schedule = 1 - busy / wall (llmlab.calc.pipeline.measured_bubble), with the
stage's busy time clocked inside the very step it idles in (`Stage.busy_seconds`: its forwards,
and its backwards from the gradient reaching its output to the gradient leaving its input), so a
machine whose speed drifts between runs moves busy and wall together. `stage_busy_seconds` (one
micro-batch timed on its own, times m) is the older, out-of-run estimate.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError


class _BackwardMark(torch.autograd.Function):
    """Identity; its backward notes the time on the stage's clock: `start` at the stage's output
    (the gradient arrives), `stop` at its input (the gradient leaves)."""

    @staticmethod
    def forward(ctx, x, clock, end):
        ctx.clock, ctx.end = clock, end
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        now = time.perf_counter()
        if ctx.end == "start":
            ctx.clock["t"] = now
        else:
            ctx.clock["busy"] += now - ctx.clock["t"]
            if ctx.clock["events"] is not None:
                ctx.clock["events"].append(("B", ctx.clock["t"], now))
        return g, None, None


class Stage(nn.Module):
    """Layers [lo, hi) of an llmlab Transformer; the first stage embeds, the last one norms and
    projects to logits."""

    def __init__(self, model, lo: int, hi: int, first: bool, last: bool):
        super().__init__()
        self.layers = nn.ModuleList(model.model.layers[lo:hi])
        self.embed = model.model.embed_tokens if first else None
        self.norm = model.model.norm if last else None
        self.head = model.lm_head if last else None
        self.rope = model.rope
        # seconds computing since the last reset (forward + backward); events: None, or a list that
        # collects ("F" | "B", start, stop) perf_counter stamps (a per-stage timeline)
        self.clock = {"busy": 0.0, "t": 0.0, "events": None}

    @property
    def busy_seconds(self) -> float:
        return self.clock["busy"]

    def forward(self, x):
        t = time.perf_counter()
        h = self.embed(x) if self.embed is not None else x
        if torch.is_grad_enabled() and h.requires_grad:
            h = _BackwardMark.apply(h, self.clock, "stop")
        rope = self.rope(torch.arange(h.shape[1], device=h.device), h.dtype) if self.rope is not None else None
        for layer in self.layers:
            h = layer(h, rope)
        out = self.head(self.norm(h)) if self.head is not None else h
        if torch.is_grad_enabled() and out.requires_grad:
            out = _BackwardMark.apply(out, self.clock, "start")
        now = time.perf_counter()
        self.clock["busy"] += now - t
        if self.clock["events"] is not None:
            self.clock["events"].append(("F", t, now))
        return out


def split_stages(model, rank: int, stages: int) -> Stage:
    L = model.config.num_hidden_layers
    if L % stages:
        raise UserError(f"pipeline: {stages} stages do not divide the {L} layers")
    if stages > 1 and model.config.tie_word_embeddings:
        raise UserError("pipeline: the first and last stage would each hold the tied embedding, and their "
                        "gradients would have to be summed across ranks; set tie_word_embeddings=false")
    per = L // stages
    return Stage(model, rank * per, (rank + 1) * per, rank == 0, rank == stages - 1)


def lm_loss(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def stage_busy_seconds(stage: Stage, x_micro: torch.Tensor, y_micro: torch.Tensor, hidden: int,
                       repeats: int = 3) -> float:
    """Seconds this stage computes per micro-batch (forward + backward, no communication): the
    best of `repeats` runs on a micro-batch of the shapes it sees in the pipeline."""
    first, last = stage.embed is not None, stage.head is not None
    inp = x_micro if first else torch.randn(*x_micro.shape, hidden, requires_grad=True)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = stage(inp)
        if last:
            lm_loss(out, y_micro).backward()
        else:
            out.backward(torch.ones_like(out))
        best = min(best, time.perf_counter() - t)
    stage.zero_grad(set_to_none=True)
    return best


def p2p_seconds(shape: tuple[int, ...], rank: int, repeats: int = 20) -> float:
    """Median seconds of one point-to-point transfer of a float32 tensor of `shape` between ranks 0
    and 1 (half a ping-pong round trip), on the current process group; other ranks return 0."""
    import torch.distributed as dist
    buf = torch.randn(shape)
    times = []
    dist.barrier()
    for _ in range(repeats + 2):
        t = time.perf_counter()
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        elif rank == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)
        times.append((time.perf_counter() - t) / 2)
    times = sorted(times[2:])  # the first two warm the connection
    return times[len(times) // 2] if rank in (0, 1) else 0.0


def schedule_overhead_seconds(model, x, y, micro_batches: int, schedule: str, group, steps: int = 4) -> float:
    """Median seconds per micro-batch that the pipelining runtime spends outside stage compute (schedule
    bookkeeping, the loss, autograd around the stage) with no communication: the whole `model` as a
    one-stage pipeline on `group` (a one-rank process group), wall - busy per step, over m."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
    whole = Stage(model, 0, model.config.num_hidden_layers, True, True)
    stage = PipelineStage(whole, 0, 1, torch.device("cpu"), group=group)
    sched = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule](stage, micro_batches, loss_fn=lm_loss)
    gaps = []
    for i in range(steps + 1):
        whole.clock.update(busy=0.0, t=0.0)
        t = time.perf_counter()
        sched.step(x, target=y, losses=[])
        if i:  # the first step warms up
            gaps.append(time.perf_counter() - t - whole.busy_seconds)
    gaps.sort()
    return gaps[len(gaps) // 2] / micro_batches


def pipeline_step(stage_module: Stage, rank: int, stages: int, x, y, micro_batches: int, schedule: str = "gpipe"):
    """One training step's forward+backward through the pipeline; returns (loss or None, seconds).
    Afterwards `stage_module.busy_seconds` is the stage's compute time within this step.

    The PipelineStage and its schedule are built on the first call and reused (as a training loop
    does): building them runs the runtime's warm-up vote and metadata inference, which executes a
    real forward of one micro-batch on every stage, one stage after the other, so a schedule rebuilt
    every step adds about a serial forward per stage to each step's wall (docs/distributed.md)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
    if x.shape[0] % micro_batches:
        raise UserError(f"pipeline: batch {x.shape[0]} is not divisible into {micro_batches} micro-batches")
    kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}.get(schedule)
    if kind is None:
        raise UserError(f"pipeline schedule must be gpipe or 1f1b, got {schedule!r}")
    key = (rank, stages, micro_batches, schedule, tuple(x.shape))
    cache = stage_module.__dict__.setdefault("_schedules", {})
    if key not in cache:
        stage = PipelineStage(stage_module, rank, stages, torch.device("cpu"))
        cache[key] = kind(stage, micro_batches, loss_fn=lm_loss)
    sched = cache[key]
    losses: list = []
    stage_module.clock.update(busy=0.0, t=0.0)
    t = time.perf_counter()
    if rank == 0:
        sched.step(x)
    elif rank == stages - 1:
        sched.step(target=y, losses=losses)
    else:
        sched.step()
    seconds = time.perf_counter() - t
    stage_module.clock["step"] = (t, t + seconds)
    loss = torch.stack(losses).mean() if losses else None
    return loss, seconds


def timeline_summary(events: list[tuple[str, float, float]], start: float, stop: float) -> dict:
    """One stage's step as seconds: forward and backward compute, idle before its first op (fill),
    between ops (waiting on a neighbour, transfers, the runtime) and after its last op (drain,
    the loss and the runtime's wrap-up), from `Stage` events stamped during [start, stop]."""
    ev = sorted((e for e in events if start <= e[1] <= stop), key=lambda e: e[1])
    if not ev:
        return {"wall": stop - start, "F": 0.0, "B": 0.0, "head": stop - start, "gaps": 0.0, "tail": 0.0}
    gaps = sum(max(0.0, b[1] - a[2]) for a, b in zip(ev, ev[1:]))
    return {"wall": stop - start, "F": sum(e[2] - e[1] for e in ev if e[0] == "F"),
            "B": sum(e[2] - e[1] for e in ev if e[0] == "B"), "head": ev[0][1] - start, "gaps": gaps,
            "tail": stop - ev[-1][2], "n": len(ev)}


def timeline_inputs(timelines: list[list[dict]]) -> dict:
    """The op-level inputs of `llmlab.calc.pipeline.simulate_schedule`, measured from the stages'
    events (timelines[i]: stage i's steps, each {"step": (start, stop), "ops": [(kind, t0, t1)]}):
    medians of each stage's forward and backward seconds per micro-batch, of its gap between two
    ops whose input was already there (the runtime's own time: posting sends, the loss, bookkeeping)
    and, over every op that waited for its neighbour, of the hand-off latency (the neighbour's op
    end to this op's start: transfer + receive). The k-th F (B) of a stage in a step is micro-batch k."""
    import statistics
    p = len(timelines)
    fwd, bwd, gaps, hand = [[] for _ in range(p)], [[] for _ in range(p)], [[] for _ in range(p)], []
    for steps in zip(*timelines):
        ops = []
        for i, st in enumerate(steps):
            ev = sorted(st["ops"], key=lambda e: e[1])
            byk = {}
            for kind in ("F", "B"):
                mine = [e for e in ev if e[0] == kind]
                (fwd if kind == "F" else bwd)[i].extend(e[2] - e[1] for e in mine)
                byk.update({(kind, k): e for k, e in enumerate(mine)})
            ops.append(byk)
        for i in range(p):
            ev = sorted(ops[i].items(), key=lambda kv: kv[1][1])
            for (_, prev), ((kind, k), op) in zip(ev, ev[1:]):
                src = ops[i - 1].get(("F", k)) if kind == "F" and i else ops[i + 1].get(("B", k)) if kind == "B" and i < p - 1 else None
                if src is None or src[2] <= prev[2]:
                    gaps[i].append(op[1] - prev[2])
                else:
                    hand.append(op[1] - src[2])
    med = statistics.median
    return {"forward_s": [med(x) for x in fwd], "backward_s": [med(x) for x in bwd],
            "gap_s": [med(g) if g else 0.0 for g in gaps], "handoff_s": med(hand) if hand else 0.0}
