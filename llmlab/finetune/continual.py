"""Forgetting remedies for sequential fine-tuning (notes 004 sec. 14; d003 sec. 2.18): EWC and a
replay buffer, and the experiment that measures how much of an old task each keeps.

EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting"; the notes' "elastic weight
sharing" is elastic weight *consolidation*): after task A, keep theta*_A and the diagonal of the
empirical Fisher information F_i = E_x[(d log p(x) / d theta_i)^2] (per-sequence gradients of the
task-A loss); while training B, add

    (lambda / 2) sum_i F_i (theta_i - theta*_A,i)^2

so parameters that mattered for A move little. Replay (Rolnick et al. 2019, "Experience replay
for continual learning"): a reservoir-sampled buffer of task-A examples (Vitter's Algorithm R:
each of the N seen items is in the buffer with probability k/N) is mixed into every task-B batch.
(`llmlab sft replay_ratio=` mixes pretraining text into SFT the same way; this buffer is the
bounded-memory version for a stream.)

    python -m llmlab.finetune.continual   # the table in docs/finetune.md (~8 min on 1 loaded thread)
"""
from __future__ import annotations

import random
from typing import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def _zeros_like_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}


def fisher_diagonal(model: nn.Module, examples: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over examples of the squared gradient of loss_fn(model, ex)
    (one backward per example: the square of a batch-mean gradient would be a different, smaller
    quantity)."""
    fisher, n = _zeros_like_params(model), 0
    was = model.training
    model.eval()
    for ex in examples:
        model.zero_grad(set_to_none=True)
        loss_fn(model, ex).backward()
        for name, p in model.named_parameters():
            if p.requires_grad and p.grad is not None:
                fisher[name] += p.grad.detach() ** 2
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was)
    if n == 0:
        raise ValueError("fisher_diagonal: no examples")
    return {k: v / n for k, v in fisher.items()}


class EWC:
    """The EWC penalty around the weights the model has when this is built."""

    def __init__(self, model: nn.Module, fisher: dict[str, torch.Tensor], lam: float):
        self.lam, self.fisher = lam, fisher
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in fisher}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = None
        for n, p in model.named_parameters():
            if n in self.fisher:
                term = (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
                total = term if total is None else total + term
        return 0.5 * self.lam * total


class ReplayBuffer:
    """Reservoir sample of a stream (Algorithm R), capacity k, seeded."""

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError("ReplayBuffer capacity must be >= 1")
        self.capacity, self.items, self.seen = capacity, [], 0
        self.rng = random.Random(seed)

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)  # keep with probability k / seen
            if j < self.capacity:
                self.items[j] = item

    def sample(self, n: int) -> list:
        return [self.rng.choice(self.items) for _ in range(n)] if self.items else []


# --- the experiment -----------------------------------------------------------------------------

def _windows(texts: Iterable[str], length: int, count: int) -> torch.Tensor:
    data = bytearray()
    for t in texts:
        data += t.encode("utf-8") + b"\n"
        if len(data) >= (length + 1) * count:
            break
    arr = torch.tensor(list(data[:(length + 1) * count]), dtype=torch.long)
    return arr.view(-1, length + 1)


def _lm_loss(model, rows: torch.Tensor) -> torch.Tensor:
    return model.loss(rows[:, :-1], rows[:, 1:])


@torch.no_grad()
def _eval(model, rows: torch.Tensor) -> float:
    model.eval()
    out = float(sum(_lm_loss(model, rows[i:i + 32]) * len(rows[i:i + 32]) for i in range(0, len(rows), 32)) / len(rows))
    model.train()
    return out


def _train(model, rows: torch.Tensor, steps: int, batch: int, lr: float, seed: int, ewc: EWC | None = None,
           replay: ReplayBuffer | None = None, replay_share: float = 0.0) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    n_old = round(batch * replay_share) if replay is not None else 0
    for _ in range(steps):
        x = rows[torch.randint(0, len(rows), (batch - n_old,), generator=g)]
        if n_old:
            x = torch.cat([x, torch.stack(replay.sample(n_old))])
        loss = _lm_loss(model, x)
        if ewc is not None:
            loss = loss + ewc.penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def task_a_model(seed: int, steps_a: int = 300) -> dict:
    """Task A (English Wikipedia bytes) learned from scratch; the data splits of A and B
    (People's Daily bytes) with it. One per seed, shared by every remedy compared."""
    from llmlab.data.sources import news_zh, wiki_en
    from llmlab.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    a = _windows(wiki_en(), 64, 900)
    b = _windows(news_zh(), 64, 700)
    model = Transformer(ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    max_position_embeddings=64))
    _train(model, a[:700], steps_a, 16, 3e-3, seed)
    return {"seed": seed, "model": model, "a_train": a[:700], "a_dev": a[700:800], "a_test": a[800:900],
            "b_train": b[:600], "b_test": b[600:700]}


def forgetting_run(base: dict, ewc_lambda: float, replay_share: float, eval_split: str = "test",
                   steps_b: int = 150, buffer: int = 64) -> dict:
    """Fine-tune a copy of `base`'s task-A model on task B with one remedy setting: the old-task
    loss before and after, and the new-task loss."""
    import copy
    model, seed = copy.deepcopy(base["model"]), base["seed"]
    old_eval = base["a_test"] if eval_split == "test" else base["a_dev"]
    before = _eval(model, old_eval)
    ewc = replay = None
    if ewc_lambda > 0:
        fisher = fisher_diagonal(model, [base["a_train"][i:i + 1] for i in range(64)], _lm_loss)
        ewc = EWC(model, fisher, ewc_lambda)
    if replay_share > 0:
        replay = ReplayBuffer(buffer, seed)
        for row in base["a_train"]:  # the A stream as it went by; the buffer keeps a uniform sample
            replay.add(row)
    _train(model, base["b_train"], steps_b, 16, 3e-3, seed + 1, ewc, replay, replay_share)
    after = _eval(model, old_eval)
    return {"seed": seed, "old_before": before, "old_after": after, "forgetting": after - before,
            "new_loss": _eval(model, base["b_test"])}


def main() -> None:
    from llmlab.device import setup_threads

    setup_threads(1)
    grid = [0.0, 10.0, 100.0, 1000.0]  # lambda chosen on task A's dev split, seed 0
    base0 = task_a_model(0)
    dev = {lam: forgetting_run(base0, lam, 0.0, "dev") for lam in grid}
    base = dev[0.0]["forgetting"]
    # the smallest lambda that halves dev forgetting, else the best one
    ok = [lam for lam in grid[1:] if dev[lam]["forgetting"] <= base / 2]
    lam = ok[0] if ok else min(grid[1:], key=lambda x: dev[x]["forgetting"])
    print("dev (seed 0):", {k: round(v["forgetting"], 3) for k, v in dev.items()}, "-> lambda", lam)
    rows = {"plain fine-tuning": (0.0, 0.0), f"EWC (lambda {lam:g})": (lam, 0.0),
            "replay (25% of each batch, buffer 64)": (0.0, 0.25), "EWC + replay": (lam, 0.25)}
    bases = [task_a_model(s) for s in (1, 2, 3)]
    results = {name: [forgetting_run(b, l, r) for b in bases] for name, (l, r) in rows.items()}
    plain = [r["forgetting"] for r in results["plain fine-tuning"]]
    print("| method | old-task loss increase (seeds 1, 2, 3) | forgetting kept away | new-task loss |")
    print("|---|---|---:|---:|")
    for name, rs in results.items():
        f = [r["forgetting"] for r in rs]
        kept = sum(1 - x / p for x, p in zip(f, plain)) / len(f)
        print(f"| {name} | {', '.join(f'{x:.3f}' for x in f)} | {kept:.0%} | "
              f"{sum(r['new_loss'] for r in rs) / len(rs):.3f} |")


if __name__ == "__main__":
    main()
