"""Our LoRA vs HF `peft` LoRA: seconds per training step and peak memory, SmolLM2-135M, one run.

Same base (our Transformer with SmolLM2-135M-Instruct weights), same LoRA settings (r, alpha,
dropout, target modules), same token batches, same AdamW, same thread count; only the LoRA layer
implementation differs: ours (llmlab.finetune.lora.apply_lora) or peft's
(peft.inject_adapter_in_model on the very same module tree). A step is forward + backward +
optimizer step on next-token cross-entropy.

Peak memory is measured honestly: each variant runs in a fresh subprocess and reports its peak
resident set size (resource.getrusage ru_maxrss, which sees torch's allocations, unlike
tracemalloc), both total and above the level right after loading the base model. Variants
alternate (ours, peft, ours, peft, ...); figures are medians over the repeats.
Last stdout line: {"benchmark": "peft", "ours": ..., "peer": ..., "ratio": {"lora_step_speed":
peft s/step / ours, "lora_memory": peft peak / ours peak}} (higher = better for us).

`--table`: the results table of docs/finetune.md instead. Every method (full SFT, lora, qlora,
adapter, prefix, prompt, ptuning, ptuning_v2) is trained by the SFT loop (llmlab.finetune.sft) on
the same task (the arith_en + idiom_zh train splits) with the same budget (steps x batch x
max_length), on SmolLM2-135M-Instruct and on a small model of ours (the speedrun's, default
runs/speedrun/train/model). Each run is a fresh subprocess (honest peak RSS); columns: trainable
parameters, peak RSS during training, median s/step, and held-out arithmetic exact match and
idiom ROUGE-L (llmlab.finetune.sft_eval) before (the base model) and after. Last stdout line:
{"benchmark": "peft_table", "settings": ..., "rows": [...]}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# this file is named peft.py: keep `import peft` from importing it instead of the library
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args) -> dict:
    import torch

    from llmlab.device import setup_threads
    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.load import packaged_path

    setup_threads(args.threads)  # the same explicit count for both variants
    torch.manual_seed(0)
    model = load_gguf(packaged_path("smollm2"))
    model.train()
    base_rss = _rss_mib()
    if args.variant == "ours":
        from llmlab.finetune.lora import LoraConfig, apply_lora
        apply_lora(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=args.dropout,
                                     target_modules=TARGETS, init_lora_weights="kaiming"))
    else:
        import peft
        for p in model.parameters():
            p.requires_grad_(False)
        peft.inject_adapter_in_model(peft.LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=args.dropout,
                                                     target_modules=TARGETS), model)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(100, 40000, (args.batch, args.seq + 1), generator=g) for _ in range(args.steps + 1)]
    times = []
    for i, b in enumerate(batches):
        t = time.perf_counter()
        loss = model.loss(b[:, :-1], b[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:  # the first step warms up allocations and autograd
            times.append(time.perf_counter() - t)
    peak = _rss_mib()
    return {"s_per_step": statistics.median(times), "peak_rss_mib": round(peak, 1),
            "peak_above_base_mib": round(peak - base_rss, 1), "trainable_params": n_train,
            "final_loss": round(loss.item(), 4)}


# --- the results table ------------------------------------------------------------------------

TABLE_METHODS = ["full", "lora", "qlora", "adapter", "prefix", "prompt", "ptuning", "ptuning_v2"]
# peak learning rates for a short budget: the PEFT papers' usual ranges (prompt/prefix methods
# train few vectors and need large steps); full SFT of the small model can take a larger one
TABLE_LR = {"full": 5e-5, "lora": 1e-3, "qlora": 1e-3, "adapter": 1e-3, "prefix": 1e-2, "ptuning_v2": 1e-2,
            "prompt": 3e-2, "ptuning": 1e-2}
SMALL_FULL_LR = 1e-3


def table_worker(args) -> dict:
    import tempfile

    from llmlab.device import setup_threads
    from llmlab.finetune.sft_eval import evaluate_heldout

    setup_threads(args.threads)
    t0 = time.perf_counter()
    if args.method == "before":
        from llmlab.model.load import load_model
        from llmlab.tokenizer.bpe import load_tokenizer
        model, path = load_model(args.model)
        tok = load_tokenizer(path)
        res = {"trainable_params": 0, "peak_rss_mib": round(_rss_mib(), 1), "s_per_step": None}
    else:
        from llmlab.finetune.sft import sft
        from llmlab.finetune.sft_config import SftConfig
        lr = SMALL_FULL_LR if (args.method == "full" and args.model != "smollm2") else TABLE_LR[args.method]
        with tempfile.TemporaryDirectory() as d:
            r = sft(SftConfig(model=args.model, method=args.method, datasets=["arith_en", "idiom_zh"],
                              num_examples=args.num_examples, max_length=args.max_length,
                              per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=lr,
                              output_dir=d, save_strategy="no", report_to=["jsonl"], eval_max_examples=0,
                              disable_tqdm=True, seed=0), progress=False)
        model, tok = r.model, r.tokenizer
        res = {"trainable_params": r.trainable, "peak_rss_mib": round(_rss_mib(), 1),
               "s_per_step": round(r.s_per_step, 3), "final_loss": round(r.train_loss, 4), "learning_rate": lr}
    ev = evaluate_heldout(model, tok, args.limit, num_examples=args.num_examples)
    res.update(arith_em=round(ev["arith_em"], 4), idiom_rougeL=round(ev["idiom_rougeL"], 4), n_arith=ev["n_arith"],
               n_idiom=ev["n_idiom"], samples=ev["samples"], seconds=round(time.perf_counter() - t0, 1))
    return res


def table_main(args) -> None:
    small = Path(args.small_model)
    if not (small / "config.json").is_file():
        sys.exit(f"no small model at {small}: run `llmlab speedrun` first (or pass --small-model DIR)")
    if args.quick:
        args.steps, args.limit, args.methods = 2, 4, "full,lora,prompt"
    methods = ["before"] + args.methods.split(",")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(root)}
    rows = []
    for model in ([] if args.skip_smollm2 else ["smollm2"]) + [str(small)]:
        for method in methods:
            cmd = [sys.executable, __file__, "--table-worker", method, "--model", model, "--threads", str(args.threads),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--max-length", str(args.max_length),
                   "--limit", str(args.limit), "--num-examples", str(args.num_examples)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{model} {method} failed:\n{out.stderr[-3000:]}")
            res = {"model": "SmolLM2-135M" if model == "smollm2" else f"ours: {model}", "method": method,
                   **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(res)
            print(json.dumps(res, ensure_ascii=False), flush=True)
    print(markdown_table(rows))
    settings = {"task": "arith_en + idiom_zh train splits", "steps": args.steps, "batch": args.batch,
                "max_length": args.max_length, "heldout_limit": args.limit, "num_examples": args.num_examples,
                "threads": args.threads, "learning_rates": TABLE_LR, "small_full_lr": SMALL_FULL_LR}
    print(json.dumps({"benchmark": "peft_table", "settings": settings,
                      "rows": [{k: v for k, v in r.items() if k != "samples"} for r in rows]}, ensure_ascii=False))


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | method | trainable | peak RSS (MiB) | s/step | arith EM before -> after | "
             "idiom ROUGE-L before -> after |", "|---|---|---:|---:|---:|---|---|"]
    before = {r["model"]: r for r in rows if r["method"] == "before"}
    for r in rows:
        if r["method"] == "before":
            continue
        b = before[r["model"]]
        lines.append(f"| {r['model']} | {r['method']} | {r['trainable_params']:,} | {r['peak_rss_mib']:.0f} | "
                     f"{r['s_per_step']:.2f} | {b['arith_em']:.2f} -> {r['arith_em']:.2f} | "
                     f"{b['idiom_rougeL']:.3f} -> {r['idiom_rougeL']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 2 steps of 32 tokens (< 1 min)")
    ap.add_argument("--worker", dest="variant", choices=["ours", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each variant (same for both)")
    ap.add_argument("--table", action="store_true", help="every method trained and evaluated (docs/finetune.md)")
    ap.add_argument("--table-worker", dest="method", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2", help=argparse.SUPPRESS)
    ap.add_argument("--small-model", default="runs/speedrun/train/model", help="--table: our small model dir")
    ap.add_argument("--skip-smollm2", action="store_true", help="--table: only the small model")
    ap.add_argument("--methods", default=",".join(TABLE_METHODS), help="--table: methods to run")
    ap.add_argument("--max-length", type=int, default=128, help="--table: tokens per training row")
    ap.add_argument("--limit", type=int, default=50, help="--table: held-out items per task")
    ap.add_argument("--num-examples", type=int, default=700,
                    help="--table: examples per builder before the held-out split (700 -> ~50 held out each)")
    args = ap.parse_args()
    if args.method:
        print(json.dumps(table_worker(args), ensure_ascii=False))
        return
    if args.table:
        if "--steps" not in sys.argv:
            args.steps = 30
        if "--batch" not in sys.argv:
            args.batch = 4
        table_main(args)
        return
    if args.variant:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.repeats, args.steps, args.seq, args.batch = 1, 2, 32, 1
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(root)}
    runs = {"ours": [], "peft": []}
    for rep in range(args.repeats):
        for variant in ("ours", "peft") if rep % 2 == 0 else ("peft", "ours"):
            cmd = [sys.executable, __file__, "--worker", variant, "--steps", str(args.steps), "--seq", str(args.seq),
                   "--batch", str(args.batch), "--r", str(args.r), "--dropout", str(args.dropout),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{variant} worker failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs[variant].append(res)
            print(f"repeat {rep} {variant}: {res}", flush=True)

    def summary(rs):
        return {"s_per_step": round(statistics.median(r["s_per_step"] for r in rs), 4),
                "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in rs), 1),
                "peak_above_base_mib": round(statistics.median(r["peak_above_base_mib"] for r in rs), 1),
                "trainable_params": rs[0]["trainable_params"]}

    ours, peer = summary(runs["ours"]), summary(runs["peft"])
    settings = {"model": "SmolLM2-135M (our Transformer)", "r": args.r, "lora_alpha": 2 * args.r,
                "lora_dropout": args.dropout, "target_modules": TARGETS, "batch": args.batch, "seq": args.seq,
                "steps": args.steps, "repeats": args.repeats, "threads": args.threads}
    print(json.dumps({"benchmark": "peft", "settings": settings, "ours": ours, "peer": peer,
                      "ratio": {"lora_step_speed": round(peer["s_per_step"] / ours["s_per_step"], 3),
                                "lora_memory": round(peer["peak_rss_mib"] / ours["peak_rss_mib"], 3)}}))


if __name__ == "__main__":
    main()
