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
    args = ap.parse_args()
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
