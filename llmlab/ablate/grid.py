"""`llmlab ablate`: train every row of the grid (llmlab/ablate/rows.py) for each seed at one compute
budget on the speedrun corpus, and report held-out bits per byte, mean +- std over seeds.

Equal compute means equal training FLOPs: the reference row (LLaMA defaults) trains `max_steps`
steps of `batch_size` x `context` tokens; every other row gets the number of steps that spends the
same FLOPs at its own cost per token (`flops_per_token`: 6N + 12 L H Q T, Kaplan / PaLM, N = non-
embedding weights + LM head, MoE counting the active experts only). Variants with fewer weights
(GQA, MQA) therefore see more tokens; MoE rows get the dense row's steps (equal active params).
The metric is the same for every row: bits per byte of the whole held-out split (trainer.evaluate);
the objective and architecture rows (llmlab/ablate/objrows.py) add a span-infilling loss and report
"n/a" bits per byte for the encoder-decoder, which has no causal score.

Resumable: each finished (row, seed) appends one line to results.jsonl; a rerun skips lines whose
settings signature matches, and an interrupted run resumes from its last checkpoint. Workers may
share one output_dir (e.g. `seeds=0,1` and `seeds=2` on two cores): each checks the file before a run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmlab.errors import UserError
from llmlab.log import get_logger

log = get_logger("llmlab.ablate")


@dataclass
class AblateConfig:
    output_dir: str = field(default="runs/ablate", metadata={"help": "results.jsonl, table.md, ablation.png"})
    corpus_dir: str = field(default="runs/ablate/corpus", metadata={"help": "speedrun corpus cache (built once)"})
    max_docs: int = field(default=10_000, metadata={"help": "corpus documents (speedrun mix)"})
    vocab_size: int = 2048
    rows: list[str] = field(default_factory=list, metadata={"help": "row names to run (empty: all)"})
    groups: list[str] = field(default_factory=list, metadata={"help": "groups to run (empty: all)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    context: int = field(default=128, metadata={"help": "training window (tokens)"})
    batch_size: int = 16
    max_steps: int = field(default=600, metadata={"help": "the reference row's steps; sets the FLOP budget"})
    learning_rate: float = 2e-3
    save_steps: int = field(default=100, metadata={"help": "checkpoint interval (resume of a killed run)"})
    quick: bool = field(default=False, metadata={"help": "tiny model, 1 seed, few steps: a smoke run in minutes"})
    progress: bool = True

    def __post_init__(self):
        if self.quick:
            self.max_docs, self.vocab_size, self.hidden_size, self.num_hidden_layers = 300, 512, 32, 2
            self.context, self.batch_size, self.max_steps, self.seeds = 32, 4, 8, self.seeds[:1]
            self.corpus_dir = self.corpus_dir.rstrip("/") + "-quick"
        if not self.seeds:
            raise UserError("seeds: give at least one seed")
        for k in ("hidden_size", "num_hidden_layers", "context", "batch_size", "max_steps"):
            if getattr(self, k) < 1:
                raise UserError(f"{k} must be >= 1, got {getattr(self, k)}")

    def signature(self) -> str:
        keys = ("max_docs", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "context",
                "batch_size", "max_steps", "learning_rate")
        return hashlib.sha1(json.dumps([getattr(self, k) for k in keys]).encode()).hexdigest()[:10]


def model_config(cfg: AblateConfig, row, tok_vocab: int, eos: int | None):
    from llmlab.model.config import ModelConfig
    base = dict(vocab_size=tok_vocab, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads, max_position_embeddings=cfg.context,
                eos_token_id=eos, pad_token_id=eos)
    return ModelConfig(**{**base, **row.model})


def steps_for(cfg: AblateConfig, mcfg, ref_cfg) -> int:
    """Steps that spend the reference row's training FLOPs at this row's FLOPs per token."""
    from llmlab.model.transformer import flops_per_token
    ratio = flops_per_token(ref_cfg, cfg.context) / flops_per_token(mcfg, cfg.context)
    return max(1, round(cfg.max_steps * ratio))


def train_one(cfg: AblateConfig, row, seed: int, corpus: dict, tok, run_dir: Path) -> dict:
    """Train one (row, seed); -> its results line."""
    import torch

    from llmlab.data.loader import TokenWindowLoader
    from llmlab.model.transformer import Transformer, flops_per_token
    from llmlab.train.config import TrainConfig
    from llmlab.train.trainer import train

    from llmlab.ablate import objrows
    from llmlab.ablate.rows import Row
    ref = model_config(cfg, Row("reference", ""), tok.vocab_size, tok.eos_id)
    mcfg = model_config(cfg, row, tok.vocab_size, tok.eos_id)
    if objrows.is_objective_row(row):
        return objrows.train_one(cfg, row, seed, corpus, tok, run_dir, mcfg, flops_per_token(ref, cfg.context))
    steps = steps_for(cfg, mcfg, ref)
    torch.manual_seed(seed)
    model = Transformer(mcfg)
    tl = TokenWindowLoader(corpus["train"], cfg.context, cfg.batch_size, seed=seed)
    val_batch = max(1, min(cfg.batch_size, 4096 // cfg.context))
    vl = TokenWindowLoader(corpus["val"], cfg.context, val_batch, shuffle=False)
    tcfg = TrainConfig(output_dir=str(run_dir), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                       max_length=cfg.context, learning_rate=cfg.learning_rate, warmup_steps=max(1, steps // 20),
                       seed=seed, device="cpu", report_to=["jsonl"], save_steps=cfg.save_steps, save_total_limit=1,
                       resume_from_checkpoint="auto", eval_batches=0, bytes_per_token=corpus["bytes_per_token"],
                       peak_flops=1e12, disable_tqdm=True, logging_steps=max(1, steps // 10),
                       spike_guard="off", **{k: v for k, v in row.train.items()})
    res = train(tcfg, model, tl, vl)
    fpt = flops_per_token(mcfg, cfg.context)
    return {"row": row.name, "group": row.group, "key": row.key, "seed": seed, "signature": cfg.signature(),
            "val_bpb": res.val_bpb, "val_loss": res.val_loss, "train_loss": res.train_loss, "steps": res.step,
            "tokens": res.tokens, "params": model.num_params(), "flops_per_token": fpt,
            "train_flops": fpt * res.tokens, "seconds": round(res.seconds, 1)}


def read_results(path: Path) -> list[dict]:
    """The finished runs (a line cut by a kill is skipped: that run is redone)."""
    from llmlab.data.packages import read_log
    return read_log(path)


def _done(cfg: AblateConfig, path: Path) -> set:
    return {(r["key"], r["seed"]) for r in read_results(path) if r["signature"] == cfg.signature()}


def summarize(cfg: AblateConfig, rows, results: list[dict], missing: dict[str, str]) -> list[dict]:
    """One line per row: mean/std bpb over the seeds done (shared keys share runs), or why it is missing."""
    by_key: dict[str, list[dict]] = {}
    seen = set()
    for r in results:
        # the first line of a (row, seed) counts: two workers that raced on one run would write it twice
        if r["signature"] == cfg.signature() and r["seed"] in cfg.seeds and (r["key"], r["seed"]) not in seen:
            seen.add((r["key"], r["seed"]))
            by_key.setdefault(r["key"], []).append(r)
    out = []
    for row in rows:
        done = by_key.get(row.key, [])
        line = {"row": row.name, "group": row.group, "seeds": len(done), "status": missing.get(row.name, "")}
        for name, metric in (("bpb", "val_bpb"), ("infill", "infill_loss"), ("span", "infill_span_loss")):
            vals = [r[metric] for r in done if r.get(metric) is not None]
            if vals:
                line.update({f"{name}_mean": statistics.fmean(vals),
                             f"{name}_std": statistics.stdev(vals) if len(vals) > 1 else 0.0})
        if done:
            line.update(steps=done[0]["steps"], params=done[0]["params"],
                        seconds=statistics.fmean(r["seconds"] for r in done))
        elif not line["status"]:
            line["status"] = "not run yet"
        out.append(line)
    return out


def table(summary: list[dict]) -> str:
    """Markdown table; span-infill = held-out span-corruption loss per target token (nats), all targets /
    the dropped span tokens only (sentinels excluded); objective and architecture rows only."""
    lines = ["| group | row | held-out bpb (mean ± std) | span-infill loss, all targets | span-infill loss, span tokens "
             "| seeds | steps | params | s/run |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["seeds"]:
            bpb = f"{s['bpb_mean']:.4f} ± {s['bpb_std']:.4f}" if "bpb_mean" in s else "n/a (no causal score)"
            infill = " | ".join(f"{s[k + '_mean']:.4f} ± {s[k + '_std']:.4f}" if k + "_mean" in s else "—"
                                for k in ("infill", "span"))
            lines.append(f"| {s['group']} | {s['row']} | {bpb} | {infill} | {s['seeds']} | "
                         f"{s['steps']} | {s['params'] / 1e6:.2f}M | {s['seconds']:.0f} |")
        else:
            lines.append(f"| {s['group']} | {s['row']} | {s['status']} | | | 0 | | | |")
    return "\n".join(lines) + "\n"


def run(cfg: AblateConfig) -> list[dict]:
    from llmlab.ablate.corpus import prepare_corpus
    from llmlab.ablate.rows import missing, select
    from llmlab.tokenizer.bpe import load_tokenizer
    from llmlab.train.config import TrainConfig

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = select(cfg.rows, cfg.groups)
    why = {r.name: m for r in rows if (m := missing(r, TrainConfig))}
    corpus = prepare_corpus(cfg.corpus_dir, cfg.max_docs, cfg.vocab_size, progress=cfg.progress and not cfg.quick)
    tok = load_tokenizer(corpus["tokenizer"])
    results_path = out / "results.jsonl"
    todo, seen = [], _done(cfg, results_path)
    for seed in cfg.seeds:  # seed-major: a partial grid has every row at seed 0 first
        for row in rows:
            if row.name not in why and (row.key, seed) not in seen:
                seen.add((row.key, seed))
                todo.append((row, seed))
    bar = None
    if cfg.progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="ablate", dynamic_ncols=True)
    for row, seed in todo:
        if (row.key, seed) in _done(cfg, results_path):  # another worker (e.g. `seeds=2` beside us) did it
            if bar is not None:
                bar.update(1)
            continue
        run_dir = out / "runs" / f"{row.key}-seed{seed}"
        if bar is not None:
            bar.set_postfix_str(f"{row.group}: {row.name} seed {seed}")
        t0, c0 = time.perf_counter(), time.process_time()
        rec = train_one(cfg, row, seed, corpus, tok, run_dir)
        rec["wall_seconds"] = round(time.perf_counter() - t0, 2)  # build + train + evaluate + save
        # this process's CPU time over the same span: on a shared machine the wall time counts the other
        # users' share too, the CPU time does not (benchmarks/ablation_time.py --clock cpu)
        rec["cpu_seconds"] = round(time.process_time() - c0, 2)
        with open(results_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints only serve resume
        bpb = "n/a" if rec["val_bpb"] is None else f"{rec['val_bpb']:.4f}"
        infill = (f", span-infill {rec['infill_loss']:.4f} (span tokens {rec['infill_span_loss']:.4f})"
                  if "infill_loss" in rec else "")
        log.info(f"{row.group}: {row.name} seed {seed}: bpb {bpb}{infill} ({rec['steps']} steps, "
                 f"{rec['seconds']:.0f} s)")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    summary = summarize(cfg, rows, read_results(results_path), why)
    (out / "table.md").write_text(table(summary))
    (out / "summary.json").write_text(json.dumps({"config": asdict(cfg), "rows": summary}, indent=1))
    if any("bpb_mean" in s for s in summary):
        from llmlab.ablate.plots import ablation_plot
        ablation_plot([s for s in summary if "bpb_mean" in s], out / "ablation.png")
    if any("infill_mean" in s for s in summary):
        from llmlab.ablate.plots import infill_plot
        infill_plot(summary, out / "infill.png")
    return summary
