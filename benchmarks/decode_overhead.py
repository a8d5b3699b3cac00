"""Where a batch-1 decode step's time goes besides the weight products, at 1 and 2 threads (issue 21).

SmolLM2 (the packaged GGUF) batch-1 steps on `ContiguousDecoder` after a 64-token prompt, at each
thread count in turn (rounds alternate the order), with `inference.py --profile`'s breakdown
(`_inference_profile._run_profiled`: the C decoder layers' own piece timers, the LM head, the
Python around them), and the costs of a hand-off between threads on the runtime the products use
(torch's libgomp; `layer.c`'s `llmlab_omp_probe`): an empty parallel region, a barrier, a region
after a short one-thread op; and a tiny torch op at each count. Wall-clock, so 2-thread figures
mean something on a quiet machine only; `--clock cpu` (process CPU time) for one thread under load.

    PYTHONPATH=$PWD python benchmarks/decode_overhead.py [--arms 1:1:1,2:0:1,2:1:1] [--rounds 3] [--steps 32]
                                                        [--clock wall|cpu] [--quick]

Arms are threads:team:int8[:head[:qsplit[:silu[:fq[:f16[:row[:a1[:av[:sv[:nta]]]]]]]]]] (team: LLMLAB_C_TEAM, every layer in one parallel
region; int8: LLMLAB_INT8_ACTIVATIONS; head: LLMLAB_C_HEAD; qsplit: LLMLAB_C_QSPLIT; silu:
LLMLAB_C_FAST_SILU; fq: LLMLAB_I8_FAST_QUANT; f16: LLMLAB_I8_F16_SCALES; row: LLMLAB_I8_ONE_ROW; a1: LLMLAB_C_ATTN_ONE;
av: LLMLAB_C_ATTN_VEC; sv: LLMLAB_C_SILU_VEC; nta: LLMLAB_I8_PF_NTA), taken in turn, the order flipped each round;
medians over rounds. Also the read bandwidth and each arm's step as a fraction of its limit (bandwidth / bytes per token;
1 thread: one core's bandwidth): the bandwidth is the median of probes taken before the first arm and
after every arm's timing (`llmlab.calc.roofline.ReadBandwidth`); `*_oldbw`: against the reads before the
timings (`inference.py`'s roofline, the estimate until session 14). Last line: the standard JSON
(`ours`: per arm the step, product and non-product ms, the pieces; the probes; `ratio`: each arm's
non-product share and fraction of the limit).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def omp_probe(nt: int, reps: int) -> dict:
    """Microseconds per empty region, per barrier, per region after 20 us of one-thread work."""
    import ctypes

    from llmlab.kernels import layer as c_layer
    lib = c_layer.load()
    if lib is None:
        return {}
    out = (ctypes.c_double * 3)()
    lib.llmlab_omp_probe(nt, reps, 20e-6, out)  # warm the team
    lib.llmlab_omp_probe(nt, reps, 20e-6, out)
    return {"region_us": out[0] * 1e6, "barrier_us": out[1] * 1e6, "region_after_gap_us": out[2] * 1e6}


def torch_probe(nt: int, reps: int) -> dict:
    """Microseconds per call of the small torch ops a step makes outside the C layers."""
    import torch.nn.functional as F

    from llmlab.device import num_threads
    x, y, w, lg = torch.randn(1, 576), torch.randn(1, 576), torch.ones(576), torch.randn(49152)
    ops = {"add_576": lambda: x.add_(y), "rms_norm_576": lambda: F.rms_norm(x, (576,), w, 1e-5),
           "argmax_49152": lambda: lg.argmax()}
    out = {}
    with num_threads(nt):
        for name, fn in ops.items():
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                ts.append((time.perf_counter() - t0) / reps)
            out[name + "_us"] = 1e6 * statistics.median(ts)
    return out


def regions_per_step(model, nt: int) -> int:
    """OpenMP regions one batch-1 step opens for the layers' products and the LM head (by the
    kernels' thresholds; team mode: one for every layer)."""
    from llmlab.kernels import ggml
    from llmlab.kernels import layer as c_layer
    if nt <= 1:
        return 0
    cfg = model.config
    d, f, H, Hkv, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, \
        cfg.head_dim
    if c_layer.team_mode(1, nt):
        return 1 if c_layer.head_in_c() else 2  # one team for every layer (and the head), or the head's own
    thr = ggml.PARALLEL_MACS_INT8 if ggml.int8_activations() and ggml.int8_simd() else ggml.PARALLEL_MACS
    per_layer = sum(rows * k >= thr for rows, k in (((H + 2 * Hkv) * D, d), (d, H * D), (2 * f, d), (d, f)))
    return cfg.num_hidden_layers * per_layer + 1


def run_steps(model, nt: int, steps: int, clock, seed: int) -> dict:
    import _inference_profile as prof

    from llmlab.device import num_threads
    from llmlab.infer.runner import ContiguousDecoder
    from llmlab.infer.threads import ThreadTuner
    g = torch.Generator().manual_seed(seed)
    with num_threads(nt), torch.inference_mode():
        dec = ContiguousDecoder(model, 64 + 2 * steps + 16)
        dec.tuner = ThreadTuner(nt)
        dec.tuner.cands = [nt]  # this count for every layer (no tuning)
        logits = dec.forward(torch.randint(100, 40000, (64,), generator=g).tolist())
        for _ in range(4):
            logits = dec.forward([int(logits.argmax())])
        ts = []
        for _ in range(steps):  # plain greedy steps (no timers): the step time, with the argmax
            t0 = clock()
            logits = dec.forward([dec.last_argmax if dec.last_argmax is not None else int(logits.argmax())])
            ts.append(clock() - t0)
        toks = torch.randint(100, 40000, (steps,), generator=g).tolist()
        pieces, prof_s = prof._run_profiled(model, None, prof._Step(dec, "forward", lambda i: ([toks[i]],)), steps)
    step = statistics.median(ts)
    mm = sum(v for k, v in pieces.items() if k.startswith("matmul"))
    scale = step / prof_s  # the profiled steps' pieces, scaled to the plain steps' median
    return {"step_ms": 1e3 * step, "profiled_step_ms": 1e3 * prof_s, "products_ms": 1e3 * mm * scale,
            "nonproduct_ms": 1e3 * (prof_s - mm) * scale,
            "pieces_ms": {k: round(1e3 * v * scale, 4) for k, v in sorted(pieces.items(), key=lambda kv: -kv[1])}}


def _arm_env(team: int, int8: int, head: int = 1, qsplit: int = 1, silu: int = 1, fq: int = 1, f16: int = 1,
             row: int = 1, a1: int = 1, av: int = 1, sv: int = 1, nta: int = 1) -> None:
    from llmlab.kernels import attention, build
    os.environ.update(LLMLAB_C_TEAM=str(team), LLMLAB_INT8_ACTIVATIONS=str(int8), LLMLAB_C_HEAD=str(head),
                      LLMLAB_C_QSPLIT=str(qsplit), LLMLAB_C_FAST_SILU=str(silu), LLMLAB_I8_FAST_QUANT=str(fq),
                      LLMLAB_I8_F16_SCALES=str(f16), LLMLAB_I8_ONE_ROW=str(row),
                      LLMLAB_C_ATTN_ONE=str(a1), LLMLAB_C_ATTN_VEC=str(av), LLMLAB_C_SILU_VEC=str(sv),
                      LLMLAB_I8_PF_NTA=str(nta))
    if build.load_i8() is not None:  # read when the library opens: switch the open one
        build.load_i8().llmlab_i8_set_fast_quant(fq)
        build.load_i8().llmlab_i8_set_one_row(row)
        build.load_i8().llmlab_i8_set_pf_nta(nta)
    if attention.load() is not None:
        attention.load().llmlab_attention_fast(attention.level())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arms", default="1:1:1,2:0:1,2:1:1",
                    help="arms threads:team:int8[:head[:qsplit[:silu[:fq[:f16[:row[:a1[:av[:sv[:nta]]]]]]]]]], comma-separated (team: "
                         "LLMLAB_C_TEAM, every layer in one parallel region; int8: LLMLAB_INT8_ACTIVATIONS; head: "
                         "LLMLAB_C_HEAD, the "
                         "final norm + LM head in the C call, default 1; qsplit: LLMLAB_C_QSPLIT, team attention "
                         "by query heads, default 1; silu: LLMLAB_C_FAST_SILU, default 1; fq: LLMLAB_I8_FAST_QUANT, "
                         "the int8 input rounding in AVX2, default 1; f16: LLMLAB_I8_F16_SCALES, the blocks' fp16 "
                         "scales read by the int8 kernel, default 1; row: LLMLAB_I8_ONE_ROW, batch 1's short path in "
                         "the AVX2 int8 kernel, default 1; a1: LLMLAB_C_ATTN_ONE, team mode's one-sequence attention "
                         "entry, default 1; av: LLMLAB_C_ATTN_VEC, the attention's scores 4 keys at a time and "
                         "softmax on 8 lanes, default 1; sv: LLMLAB_C_SILU_VEC, SiLU*up on 8 lanes, default 1; "
                         "nta: LLMLAB_I8_PF_NTA, batch 1's weight prefetch non-temporal, default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the arms (order flipped each round)")
    ap.add_argument("--steps", type=int, default=32, help="timed steps per arm per round")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--quick", action="store_true", help="one arm (1 thread, exact), 1 round of 4 steps")
    args = ap.parse_args()
    if args.quick:
        args.arms, args.rounds, args.steps = "1:0:0", 1, 4
    arms = [tuple(int(v) for v in a.split(":")) for a in args.arms.split(",")]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    import _inference_profile as prof

    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.load import packaged_path
    path = packaged_path("smollm2")
    model = load_gguf(path)
    if os.environ.get("LLMLAB_PAUSE_OTHERS") == "1":
        time.sleep(3)  # the machine's scheduler pauses the other jobs within ~2 s
    counts = sorted({a[0] for a in arms})
    load_before = round(os.getloadavg()[0], 2)
    limits = prof.roofline(max(counts)) if not args.quick else {}  # the old denominator: reads before the timings
    from llmlab.calc.roofline import ReadBandwidth
    bw = ReadBandwidth(max(counts)) if not args.quick else None  # the new: probes between the arms (session 14)
    if bw:
        bw.probe()
    mb = prof.bytes_per_token(model, path, 64 + 2 * args.steps)["total_mb"]
    reps = 200 if args.quick else 2000
    probes = {n: {**omp_probe(n, reps), **torch_probe(n, reps // 10)} for n in counts}
    runs = {a: [] for a in arms}
    for r in range(args.rounds):
        for a in (arms if r % 2 == 0 else arms[::-1]):
            _arm_env(*a[1:])
            runs[a].append({**run_steps(model, a[0], args.steps, clock, seed=r), "regions": regions_per_step(model, a[0])})
            if bw:
                bw.probe()
    est = bw.estimate() if bw else {}
    summary, ratio = {}, {}
    for a, rs in runs.items():
        opts = zip(("head", "qsplit", "silu", "fq", "f16", "row", "a1", "av", "sv", "nta"), a[3:])
        name = f"{a[0]}t_team{a[1]}_int8{a[2]}" + "".join(f"_{k}{v}" for k, v in opts)
        med = {k: statistics.median(x[k] for x in rs) for k in ("step_ms", "products_ms", "nonproduct_ms")}
        med["steps_ms_rounds"] = [round(x["step_ms"], 4) for x in rs]
        med["regions_per_step"] = rs[0]["regions"]
        med["pieces_ms"] = {k: round(statistics.median(x["pieces_ms"].get(k, 0.0) for x in rs), 4)
                            for k in rs[0]["pieces_ms"]}
        if limits:  # 1 thread: one core's bandwidth
            for key, lim in (("fraction_of_limit", est), ("fraction_of_limit_oldbw", limits)):
                gbs = lim[f"bandwidth_gb_s_{a[0]}t"] if a[0] == 1 else lim["bandwidth_gb_s"]
                med[key] = round(1e3 / med["step_ms"] / (gbs * 1e3 / mb), 4)
            ratio[f"decode_roofline_{name}"] = med["fraction_of_limit"]
            ratio[f"decode_roofline_{name}_oldbw"] = med["fraction_of_limit_oldbw"]
        summary[name] = med
        ratio[f"nonproduct_share_{name}"] = round(med["nonproduct_ms"] / med["step_ms"], 4)
        print(f"--- {name}: step {med['step_ms']:.3f} ms (rounds {med['steps_ms_rounds']}), products "
              f"{med['products_ms']:.3f}, non-product {med['nonproduct_ms']:.3f} ({args.clock}, median of {len(rs)} "
              f"rounds), {med['regions_per_step']} parallel regions per step, of the limit "
              f"{med.get('fraction_of_limit', '-')} (old estimate {med.get('fraction_of_limit_oldbw', '-')})")
        for k, v in med["pieces_ms"].items():
            print(f"  {k:48s} {v:8.3f} ms")
    for n, p in probes.items():
        print(f"probes, {n} thread(s): {json.dumps({k: round(v, 3) for k, v in p.items()})}")
    print(json.dumps({"benchmark": "decode_overhead", "ours": {**summary, "probes": probes, "limits": limits,
                      "mb_per_token": mb, "clock": args.clock, "load": [load_before, round(os.getloadavg()[0], 2)]},
                      "bandwidth": est, "peer": {}, "ratio": ratio}))


if __name__ == "__main__":
    main()
