"""Evaluation speed: our harness vs lm-eval (its HF backend) on the same task and weights.

Task: MMLU 0-shot from the items lm-eval ships (llmlab.eval.tasks.mmlu), exported as an
lm-eval task so both sides score the very same prompts. Ours: llmlab.eval (bucketed right
padding, one forward pass per distinct input, LM head only on continuation positions). Peer:
`lm_eval.simple_evaluate` with `HFLM` around transformers' LlamaForCausalLM holding the same
fp32 SmolLM2-135M weights, same batch size. Model loading is excluded; task building is
included on both sides. Runs alternate; medians. Last line: JSON, ratio eval_speed = lm-eval
seconds / ours.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="4 items, 2 repeats (< 1 min on an idle machine)")
    ap.add_argument("--items", type=int, default=0, help="MMLU items (default 64; quick 4)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    n_items = args.items or (4 if args.quick else 64)
    repeats = 2 if args.quick else 3
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmlab.device import setup_threads
    from llmlab.eval.harness import EvalContext
    from llmlab.eval.lm_eval_bridge import export_multiple_choice
    from llmlab.eval.tasks.mmlu import MMLU
    from llmlab.model.hf import config_to_hf
    from llmlab.model.load import load_model
    from llmlab.tokenizer.bpe import load_tokenizer

    threads = setup_threads()
    ours, path = load_model("smollm2")
    peer = LlamaForCausalLM(LlamaConfig(**config_to_hf(ours.config))).eval()
    peer.load_state_dict(ours.state_dict(), strict=False)
    peer.tie_weights()
    hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ctx = EvalContext(ours, load_tokenizer(path), args.batch_size)
    task = MMLU(0)
    items = task.items(n_items, 1234)
    tmp = tempfile.mkdtemp(prefix="llmlab-bench-eval-")
    export_multiple_choice("bench_mmlu", [{"prompt": it["prompt"], "choices": it["letters"],
                                           "answer": it["answer"]} for it in items], tmp)
    hflm = HFLM(pretrained=peer, tokenizer=hf_tok, batch_size=args.batch_size, device="cpu")
    tm = TaskManager(include_path=tmp, include_defaults=False)

    def run_ours():
        return task.evaluate(ctx, task.items(n_items, 1234))["acc"]

    def run_peer():
        res = lm_eval.simple_evaluate(model=hflm, tasks=["bench_mmlu"], task_manager=tm, log_samples=False,
                                      bootstrap_iters=0)
        return res["results"]["bench_mmlu"]["acc,none"]

    times = {"ours": [], "peer": []}
    acc = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, fn in (("ours", run_ours), ("peer", run_peer)):
                t = time.perf_counter()
                acc[name] = fn()
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"MMLU 0-shot, {n_items} items ({4 * n_items} requests), batch {args.batch_size}, {threads} threads")
    for k in ("ours", "peer"):
        print(f"  {k:5s} {med[k]:7.2f} s  acc={acc[k]:.3f}  runs={[round(t, 2) for t in times[k]]}")
    print(json.dumps({
        "benchmark": "eval",
        "ours": {"seconds": med["ours"], "acc": acc["ours"]},
        "peer": {"seconds": med["peer"], "acc": acc["peer"]},
        "ratio": {"eval_speed": med["peer"] / med["ours"]},
        "config": {"task": "mmlu_0shot", "items": n_items, "batch_size": args.batch_size, "threads": threads,
                   "repeats": repeats, "model": "SmolLM2-135M-Instruct fp32", "peer_name": "lm-eval HFLM"},
    }))


if __name__ == "__main__":
    main()
