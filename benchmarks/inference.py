"""Inference speed on SmolLM2-135M: our decoders and engine vs transformers, side by side in one run.

- decode_tok_s: batch-1 greedy decode tokens/s, `llmlab.infer.generate.generate_ids` vs
  `transformers.generate` (same fp32 weights, same prompt, EOS ignored, prefill included);
  ours picks its own thread count (one thread for the memory-bound decode steps), so the peer is
  also shown at one thread (`peer.decode_tok_s_1thread`, not in the ratio);
- prefill_tok_s: tokens/s to prefill a 512-token prompt through the engine's paged runner vs
  transformers' forward (logits of the last position only on both sides);
- concurrent_vs_sequential: aggregate tokens/s of 32 concurrent greedy requests (mixed prompt
  lengths) through the continuous-batching engine / the same 32 run one at a time with our
  best batch-1 decoder; plus time-to-first-token and p50/p99 request latency under that load
  (all 32 arrive at t = 0).
Both sides alternate within each repeat; medians. Where llama-cpp-python is importable (not a
dependency; `benchmarks/install_llama_cpp.sh` builds it once, then PYTHONPATH=<its dir>), llama.cpp
is a third side (`_inference_llamacpp.py`): the same GGUF, thread count, prompt ids and new tokens,
greedy, warmed up, alternating with ours: `peer.llama_cpp_decode_tok_s` (prefill included, as
decode_tok_s), `llama_cpp_greedy_agree` (leading tokens its greedy continuation shares with ours),
and in the roofline its steady batch-1 step as `peer.llama_cpp_decode_roofline` (the same measured
limit as ours) with `ratio.decode_steady_vs_llama_cpp[_int8]`. `--no-llama-cpp` leaves it out. The machine's load average
(os.getloadavg, 1 min) before and after is printed and put in the JSON (`load_avg`): on a shared
CPU the figures mean little without it. Last stdout line: JSON.

Roofline columns (`_inference_profile.limits`, measured in the same run): `decode_roofline` (batch-1
steady decode tok/s / the bandwidth limit, read bandwidth / bytes per token) and
`batch32_gemm_eff` (matmul FLOPs of a 32-row decode step / (step time x fp32 GEMM ceiling)), and
both again with int8 activations (`decode_roofline_int8`, `batch32_gemm_eff_int8`: the
LLMLAB_INT8_ACTIVATIONS option) and on the Python layers (`*_pylayers`, LLMLAB_C_LAYERS=0: the
path before the C decoder layers), all alternating in the same run. `--profile` adds
the int8 option's accuracy (perplexity on held-out Wikipedia text, logit differences), the 32-row
gate/up product by route (block kernel exact / int8, BLAS on dequantized weights;
`_inference_int8.py`), and the per-step time breakdown of batch-1 and 32-row decode and `llmlab serve`'s
resident memory against GGUF size + KV pool + 150 MB (`_inference_profile.py`). `--roofline-only`
runs only the roofline columns (and with --profile the breakdowns, exact and int8).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def server_start_to_first_answer(port: int = 8791) -> float:
    """Seconds from launching `llmlab serve` to the first chat answer (12 tokens)."""
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    cli = Path(sys.executable).parent / "llmlab"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(cli), "serve", "model=smollm2", f"port={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "Capital of France?"}],
                           "max_tokens": 12, "temperature": 0}).encode()
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as r:
                    json.loads(r.read())
                return time.perf_counter() - t0
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    raise RuntimeError("server did not answer") from None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and tokens (about a minute)")
    ap.add_argument("--server-start", action="store_true",
                    help="also time `llmlab serve` launch -> first chat answer (a subprocess)")
    ap.add_argument("--repeats", type=int, default=0, help="override the number of repeats")
    ap.add_argument("--no-features", action="store_true",
                    help="skip the engine-feature columns (spec_speedup, prefix_cache_ttft: inference_features.py; "
                         "--quick skips them too: `inference_features.py --quick` is their smoke run)")
    ap.add_argument("--profile", action="store_true",
                    help="also print where a decode step's time goes (batch 1 and 32 rows) and serve's memory")
    ap.add_argument("--roofline-only", action="store_true",
                    help="only the roofline columns (and with --profile the step breakdowns): no peer, no "
                         "engine columns, no serve/int8-accuracy extras (a few minutes under load)")
    ap.add_argument("--c-layers-ab", action="store_true",
                    help="with --roofline-only: only batch-1 steps, C decoder layers vs Python layers, exact "
                         "and int8, alternating, 1 thread (wall and CPU time)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out even where it is installed")
    ap.add_argument("--llama-cpp-ab", action="store_true",
                    help="with --roofline-only: only batch-1 steps at 1 thread in process CPU time, ours exact / "
                         "int8 vs llama.cpp, alternating, each as a fraction of one core's read bandwidth limit "
                         "(holds under load)")
    args = ap.parse_args()
    repeats, new_tokens, conc_tokens = (1, 24, 12) if args.quick else (3, 64, 32)
    repeats = args.repeats or repeats

    from transformers import LlamaConfig, LlamaForCausalLM

    from llmlab.device import setup_threads
    from llmlab.infer.engine import Engine
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.paged import BlockTable, PagedKVCache
    from llmlab.infer.runner import PagedRunner
    from llmlab.infer.sampling import SamplingParams
    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.hf import config_to_hf
    from llmlab.model.load import packaged_path
    from llmlab.tokenizer.bpe import load_tokenizer

    import _inference_llamacpp as lcp  # benchmarks/ is on sys.path when this script runs
    load_before = os.getloadavg()[0]
    threads = setup_threads()
    path = packaged_path("smollm2")
    ours, tok = load_gguf(path), load_tokenizer(path)
    llama = lcp.Peer(path, threads) if lcp.available() and not args.no_llama_cpp else None
    if args.roofline_only:
        return roofline_only(ours, path, threads, args, load_before, llama)
    # the peer gets the very same fp32 weights (skips transformers' 20 s GGUF dequantization)
    peer = LlamaForCausalLM(LlamaConfig(**config_to_hf(ours.config))).eval()
    peer.load_state_dict(ours.state_dict(), strict=False)
    peer.tie_weights()
    g = torch.Generator().manual_seed(0)
    prompt512 = torch.randint(100, 40000, (512,), generator=g).tolist()
    short = prompt512[:32]
    greedy = SamplingParams(max_new_tokens=new_tokens)

    def decode_ours():
        out = list(generate_ids(ours, short, greedy))
        assert len(out) == new_tokens

    def decode_peer():
        out = peer.generate(torch.tensor([short]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, pad_token_id=0)
        assert out.shape[1] == len(short) + new_tokens

    def decode_llama():  # llama.cpp: the same prompt ids and tokens, greedy, EOS ignored
        assert len(llama.generate(short, new_tokens)) == new_tokens

    def decode_peer_1thread():  # reference column: the peer at our batch-1 thread count
        torch.set_num_threads(1)
        try:
            decode_peer()
        finally:
            torch.set_num_threads(threads)

    cache = PagedKVCache.for_model(ours, 64)
    runner = PagedRunner(ours, cache)

    def prefill_ours():
        t = BlockTable()
        cache.reserve(t, 512)
        runner.prefill(t, prompt512)
        cache.free(t)

    def prefill_peer():
        peer(torch.tensor([prompt512]), logits_to_keep=1, use_cache=True)

    lens = [int(x) for x in torch.randint(16, 160, (32,), generator=g)]
    prompts = [torch.randint(100, 40000, (n,), generator=g).tolist() for n in lens]
    cparams = SamplingParams(max_new_tokens=conc_tokens, ignore_eos=True)

    def concurrent():
        eng = Engine(ours, tok, num_blocks=32 * 20, max_num_seqs=32, prefill_chunk=512, max_prefill_tokens=2048)
        t0 = time.perf_counter()
        rids = [eng.add_request(p, cparams) for p in prompts]
        first, done, n = {}, {}, 0
        while eng.has_work():
            for o in eng.step():
                now = time.perf_counter() - t0
                first.setdefault(o.request_id, now)
                n += o.token_id is not None
                if o.finish_reason:
                    done[o.request_id] = now
        wall = time.perf_counter() - t0
        return n / wall, [first[r] for r in rids], [done[r] for r in rids]

    def sequential():
        t0 = time.perf_counter()
        n = sum(len(list(generate_ids(ours, p, cparams))) for p in prompts)
        return n / (time.perf_counter() - t0)

    res = {k: [] for k in ["dec_o", "dec_p", "dec_p1", "dec_l", "pre_o", "pre_p", "conc", "seq", "ttft50", "ttft99",
                           "lat50", "lat99"]}
    timed = [("dec_o", decode_ours, new_tokens), ("dec_p", decode_peer, new_tokens),
             ("dec_p1", decode_peer_1thread, new_tokens), ("pre_o", prefill_ours, 512), ("pre_p", prefill_peer, 512)]
    if llama is not None:
        timed.insert(1, ("dec_l", decode_llama, new_tokens))
    with torch.inference_mode():
        for _, fn, _ in timed:  # warm up
            fn()
        for _ in range(repeats):
            for key, fn, n in timed:
                t0 = time.perf_counter()
                fn()
                res[key].append(n / (time.perf_counter() - t0))
            tps, ttft, lat = concurrent()
            res["conc"].append(tps)
            res["ttft50"].append(pct(ttft, 50)), res["ttft99"].append(pct(ttft, 99))
            res["lat50"].append(pct(lat, 50)), res["lat99"].append(pct(lat, 99))
            res["seq"].append(sequential())
    med = {k: statistics.median(v) for k, v in res.items() if v}
    ours_r = {"decode_tok_s": med["dec_o"], "prefill_tok_s": med["pre_o"], "concurrent_tok_s": med["conc"],
              "sequential_tok_s": med["seq"], "ttft_p50_s": med["ttft50"], "ttft_p99_s": med["ttft99"],
              "latency_p50_s": med["lat50"], "latency_p99_s": med["lat99"]}
    peer_r = {"decode_tok_s": med["dec_p"], "prefill_tok_s": med["pre_p"], "decode_tok_s_1thread": med["dec_p1"]}
    if args.server_start:
        ours_r["server_start_to_first_answer_s"] = server_start_to_first_answer()
    import _inference_profile as prof  # benchmarks/ is on sys.path when this script runs (the "_": not itself a benchmark)
    roof_ours, roof_ratio, roof_peer = prof.limits(ours, path, threads, args.quick, llama)
    ours_r.update(roof_ours)
    peer_r.update(roof_peer)
    if args.profile:
        with torch.inference_mode():
            bd = prof.breakdown(ours, n_steps=8 if args.quick else 16)
        prof.print_breakdown(bd)
        ours_r["profile"] = bd
        os.environ["LLMLAB_INT8_ACTIVATIONS"] = "1"  # the same breakdown with the int8-activation option
        try:
            with torch.inference_mode():
                bd8 = prof.breakdown(ours, n_steps=8 if args.quick else 16)
        finally:
            os.environ.pop("LLMLAB_INT8_ACTIVATIONS", None)
        print("int8 activations:")
        prof.print_breakdown(bd8)
        ours_r["profile_int8"] = bd8
        ours_r["serve_memory"] = prof.serve_memory(ours, path)
        import _inference_int8 as int8
        ours_r["int8_activations"] = int8.int8_accuracy(ours, tok)
        print("int8 activations vs exact:", json.dumps(ours_r["int8_activations"]))
        with torch.inference_mode():
            ours_r["batch32_routes"] = int8.batch32_routes(ours)
        print("32-row gate/up by route:", json.dumps(ours_r["batch32_routes"]))
    if llama is not None:  # the llama.cpp column (alternated above)
        peer_r["llama_cpp_decode_tok_s"] = med["dec_l"]
        with torch.inference_mode():
            peer_r["llama_cpp_greedy_agree"] = lcp.greedy_agreement(list(generate_ids(ours, short, greedy)),
                                                                    llama.generate(short, new_tokens))
    features = {}
    if not (args.no_features or args.quick):  # engine features, ours with / without (inference_features.py)
        import inference_features as feat
        with torch.inference_mode():
            features = {**feat.speculative(ours, tok, 128, 4), **feat.prefix_cache(ours, tok, 32)}
        ours_r.update({k: v for k, v in features.items() if k not in ("spec_speedup", "prefix_cache_ttft")})
    for k, v in {**ours_r, **{f"peer_{k}": v for k, v in peer_r.items()}}.items():
        if not isinstance(v, (int, float)):
            continue  # the profile, the bandwidth probes' range: printed above or kept in the JSON
        print(f"{k:28s} {v:10.3f}")
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"threads={threads} repeats={repeats} decode_tokens={new_tokens} concurrent=32x{conc_tokens} "
          f"load_avg(before, after)={load}")
    print(json.dumps({"benchmark": "inference", "load_avg": load, "ours": ours_r, "peer": peer_r,
                      "ratio": {"decode_tok_s": med["dec_o"] / med["dec_p"],
                                "prefill_tok_s": med["pre_o"] / med["pre_p"],
                                "concurrent_vs_sequential": med["conc"] / med["seq"], **roof_ratio,
                                **({"decode_vs_llama_cpp": med["dec_o"] / med["dec_l"]} if "dec_l" in med else {}),
                                **{k: features[k] for k in ("spec_speedup", "prefix_cache_ttft") if k in features}}}))


def roofline_only(ours, path, threads: int, args, load_before: float, llama=None) -> None:
    """`--roofline-only`: the roofline columns (llama.cpp's steady step beside ours where `llama`)
    and, with --profile, the breakdowns (default path, then the Python layers) with and without
    int8 activations; last line the JSON."""
    import _inference_profile as prof
    if args.llama_cpp_ab:
        import _inference_llamacpp as lcp
        if llama is None:
            raise SystemExit("--llama-cpp-ab needs llama-cpp-python (benchmarks/install_llama_cpp.sh)")
        ab = lcp.cpu_ab(ours, path, rounds=3 if args.quick else 6)
        for k, v in ab.items():
            print(f"{k:34s} {v:10.3f}")
        print(json.dumps({"benchmark": "inference_llama_cpp_ab", "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                          "ours": {k: v for k, v in ab.items() if not k.startswith("llama")},
                          "peer": {k: v for k, v in ab.items() if k.startswith("llama")},
                          "ratio": {k: v for k, v in ab.items() if "_vs_" in k}}))
        return
    if args.c_layers_ab:
        ab = prof.c_layers_ab(ours)
        print(json.dumps({"benchmark": "inference_c_layers", "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                          "ours": ab, "peer": {}, "ratio": {k: v for k, v in ab.items() if k.startswith("speedup")}}))
        return
    roof_ours, roof_ratio, roof_peer = prof.limits(ours, path, threads, args.quick, llama)
    if args.profile:
        for flag, key in (("0", "profile"), ("1", "profile_int8")):
            os.environ["LLMLAB_INT8_ACTIVATIONS"] = flag
            try:
                with torch.inference_mode():
                    roof_ours[key] = prof.breakdown(ours, n_steps=8 if args.quick else 16)
            finally:
                os.environ.pop("LLMLAB_INT8_ACTIVATIONS", None)
            print("int8 activations:" if flag == "1" else "exact:")
            prof.print_breakdown(roof_ours[key])
    for k, v in {**roof_ours, **{f"peer_{k}": v for k, v in roof_peer.items()}}.items():
        if isinstance(v, (int, float)):
            print(f"{k:34s} {v:10.3f}")
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"threads={threads} load_avg(before, after)={load}")
    print(json.dumps({"benchmark": "inference_roofline", "load_avg": load, "ours": roof_ours, "peer": roof_peer,
                      "ratio": roof_ratio}))


if __name__ == "__main__":
    main()
