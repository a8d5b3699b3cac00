"""Decode tokens/s of the weight-only rows (fp32 vs int8 vs int4) through our engine.

    OMP_NUM_THREADS=1 python benchmarks/quant_decode.py [--quick] [--load-dir DIR] [--rounds 5] [--new 32]

The rows of `benchmarks/quant_methods.py` keep each weight as its dequantized values, so they run
fp32 matmuls. Here the int rows go to the block kernel as well (`llmlab.quant.blocks`: an int4 g128
zero-point group is 4 Q4_1-form blocks with the same d and m, int8 per-channel rows Q8_0-form
blocks; exact up to the fp32 rounding of d·q + m, which the printed `max_change_steps` bounds):
  fp32     SmolLM2's packaged weights decoded to fp32 (the quant table's baseline)
  gguf     the packaged file as loaded: the same values kept as its Q4_1 / Q8_0 blocks, the tied
           embedding / LM head included (Q8_0): what `llmlab` serves by default
  rtn8     int8 RTN per-channel, symmetric       -> kernel blocks
  rtn4     int4 RTN g128, zero-point             -> kernel blocks
  gptq4    int4 GPTQ g128 (clip search), loaded from --load-dir (a `quant_methods.py --save-dir`
           file) where one is there, else not run (GPTQ takes minutes)
The tied embedding / LM head stays fp32 in the other rows (as in the quant table). Each model's
held-out perplexity is printed beside its speed (a check that the kernel form is the row). Timing:
one process, greedy decode of --new tokens from one prompt, the models alternating round by round,
the median per model, in wall time and per CPU-second of the process (under load the second is the one
that holds). Last line JSON: tok/s per row, ratios int8_vs_fp32 / int4_vs_fp32 (CPU time), and which
kernel path ran (SIMD level; int8 activations only with LLMLAB_INT8_ACTIVATIONS=1).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from llmlab.kernels import build as kernel, ggml
from llmlab.quant import calibrate
from llmlab.quant.apply import quantize_model
from llmlab.quant.blocks import attach_blocks

PROMPT = "The history of the city begins"
_SIMD = {3: "avx512", 2: "avx2", 1: "sse/neon", 0: "portable"}


def decode_once(model, ids: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """-> (tokens per wall second, tokens per CPU second of this process, the tokens)."""
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    t, c = time.perf_counter(), time.process_time()
    out = list(generate_ids(model, ids, SamplingParams(max_new_tokens=n_new, ignore_eos=True)))
    return len(out) / (time.perf_counter() - t), len(out) / (time.process_time() - c), out


def saved_row(base, path, load_row) -> tuple:
    """(model, grids) of a saved quant_methods.py row for the kernel. A file saved before session 10
    holds the dequantized weights without the codes: timed, it would be an fp32 matmul under the
    row's name, so it stops the script with one line saying how to save it again."""
    m = copy.deepcopy(base)
    _, grids = load_row(m, path, list(calibrate.quantizable_linears(m)))
    if not grids:
        raise SystemExit(f"{path} holds no integer codes (saved before session 10): its decode speed would be "
                         "an fp32 matmul's; save the row again with `python benchmarks/quant_methods.py --rows "
                         "gptq4 --no-peers --save-dir DIR` (same --calib-windows)")
    return m, grids


def build_rows(a, base) -> dict:
    """name -> (model, its grids by Linear name: the quantizer's codes for the block kernel)."""
    from pathlib import Path
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    models = {"fp32": (base, None), "gguf": (load_model_and_tokenizer("smollm2")[0], None)}
    for key, kw in (("rtn8", dict(bits=8, group=-1, sym=True)), ("rtn4", dict(bits=4, group=a.group, sym=False))):
        m, grids = copy.deepcopy(base), {}
        quantize_model(m, "rtn", ragged_groups=True, grids=grids, **kw)
        models[key] = (m, grids)
    if a.load_dir:
        from quant_methods import load_row  # benchmarks/ is on sys.path when this script runs
        name = f"smollm2.gptq4.g{a.group}.b4.c{a.calib_windows}x256.safetensors"
        path = Path(a.load_dir) / name
        if path.exists():
            models["gptq4"] = saved_row(base, path, load_row)
        else:
            print(f"no {path}: the gptq4 row is not run", flush=True)
    return models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--load-dir", default="", help="quant_methods.py --save-dir output holding the gptq4 row")
    ap.add_argument("--calib-windows", type=int, default=32, help="the saved gptq4 row's calibration windows")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.rounds, a.new, a.eval_windows = 2, 8, 1
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    base, tok = load_model_and_tokenizer("smollm2")
    base.__dict__.pop("quantized", None)  # the packaged blocks: the fp32 row runs fp32 matmuls
    ev = calibrate.token_windows(tok, calibrate.wiki_split(True), a.eval_windows, 256)
    models = build_rows(a, base)
    info, ppl = {}, {}
    for name, (m, grids) in models.items():
        before = calibrate.perplexity(m, ev).perplexity
        info[name] = attach_blocks(m, grids) if grids is not None else {"blocks": len(getattr(m, "quantized", {}))}
        ppl[name] = (before, calibrate.perplexity(m, ev).perplexity)
        print(f"{name}: ppl {before:.4f} -> {ppl[name][1]:.4f} in kernel form; {info[name]}", flush=True)
    ids = tok.encode(PROMPT)
    speeds: dict[str, list[float]] = {n: [] for n in models}
    cpu: dict[str, list[float]] = {n: [] for n in models}
    for name, (m, _) in models.items():  # warm-up: builds each fused model once
        decode_once(m, ids, 2)
    for r in range(a.rounds):
        for name, (m, _) in models.items():
            tps, cps, _ = decode_once(m, ids, a.new)
            speeds[name].append(tps)
            cpu[name].append(cps)
        print(f"round {r}: " + ", ".join(f"{n} {v[-1]:.1f} ({cpu[n][-1]:.1f} per CPU-s)" for n, v in speeds.items()),
              flush=True)
    med = {n: statistics.median(v) for n, v in speeds.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    lib = kernel.load()
    path = {"simd": _SIMD.get(lib.llmlab_ggml_simd(), "?") if lib is not None else None,
            "int8_activations": ggml.int8_activations() and ggml.int8_isa() not in (None, "portable"),
            "int8_isa": ggml.int8_isa()}
    print(f"\nkernel: {path}; {a.rounds} rounds of {a.new} tokens, 1 thread\n")
    print("| row | held-out ppl (kernel form) | matrices as blocks | tok/s wall (median) | tok per CPU-s (median) "
          "| vs fp32 (CPU) |\n|---|---|---|---|---|---|")
    for n in models:
        print(f"| {n} | {ppl[n][1]:.3f} | {info[n]['blocks']} | {med[n]:.1f} | {med_cpu[n]:.1f} | "
              f"{med_cpu[n] / med_cpu['fp32']:.2f}x |")
    # CPU time: the work per token, which holds under load better than wall time (issue 21's way)
    ratio = {"int8_vs_fp32": med_cpu["rtn8"] / med_cpu["fp32"], "int4_vs_fp32": med_cpu["rtn4"] / med_cpu["fp32"]}
    print(json.dumps({"benchmark": "quant_decode", "tok_s": med, "tok_per_cpu_s": med_cpu, "all": speeds, "all_cpu": cpu,
                      "ppl": {n: p[1] for n, p in ppl.items()},
                      "blocks": info, "ratio": ratio, "kernel": path,
                      "conditions": {"rounds": a.rounds, "new_tokens": a.new, "threads": 1, "prompt": PROMPT}}))


if __name__ == "__main__":
    main()
