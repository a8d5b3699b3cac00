"""Model zoo: training tokens/s of our Transformer vs the `transformers` class for GPT-2, LLaMA and
Mixtral shapes (~10M parameters), and peak attention memory at 4k tokens of the readable
FlashAttention (llmlab.model.flash) vs naive attention.

Training: the HF model is built from its config with its own random init, ours is loaded from the
same weights (llmlab.model.hf_arch), same batch, same AdamW (foreach); one step = forward with full
logits, shifted cross-entropy over the same tokens, backward, step. fp32, alternating ours / peer,
medians of the repeats. Rates are tokens per second of process CPU time (one thread: the rate on a
free core, robust when other jobs share the machine); wall-clock rates are printed beside them and
kept as *_wall keys.
Memory: each attention (B=1, H=4, T=4096, D=64, causal, forward + backward) runs in its own child
process; the figure is the child's peak RSS growth over its inputs, sampled by a thread (glibc
returns large blocks to the OS, so RSS follows live tensors); SDPA is shown for reference. Last line: JSON with ratio keys gpt2_train_tok_s,
llama_train_tok_s, moe_train_tok_s (ours / transformers) and flash_mem (naive / ours).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def hf_configs(vocab: int):
    import transformers as T
    common = dict(vocab_size=vocab, hidden_size=256, num_attention_heads=4, max_position_embeddings=512)
    return {
        "gpt2": T.GPT2Config(vocab_size=vocab, n_embd=256, n_layer=8, n_head=4, n_positions=512,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "llama": T.LlamaConfig(**common, intermediate_size=704, num_hidden_layers=8, num_key_value_heads=4,
                               tie_word_embeddings=False),
        "moe": T.MixtralConfig(**common, intermediate_size=512, num_hidden_layers=4, num_key_value_heads=2,
                               num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False),
    }


def pair(hf_cfg):
    import transformers as T

    from llmlab.model.hf_arch import FAMILIES
    from llmlab.model.transformer import from_state_dict
    from llmlab.model.hf import config_from_hf
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(hf_cfg).train()
    d = hf_cfg.to_dict()
    cfg = config_from_hf(d)
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    ours = from_state_dict(cfg, FAMILIES[d["model_type"]].to_ours(state, cfg), "benchmark").train()
    return ours, hf


def step_fn(model, ids, is_hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss if is_hf else model.loss(ids, labels)
        loss.backward()
        opt.step()
    return step


def train_rates(repeats: int, batch: int, seq: int, vocab: int) -> dict:
    out = {}
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    for name, hf_cfg in hf_configs(vocab).items():
        ours, hf = pair(hf_cfg)
        steps = {"ours": step_fn(ours, ids, False), "peer": step_fn(hf, ids, True)}
        wall, cpu = {"ours": [], "peer": []}, {"ours": [], "peer": []}
        for s in steps.values():  # warm-up
            s()
        for r in range(repeats):
            for side in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
                t0, c0 = time.perf_counter(), time.process_time()
                steps[side]()
                wall[side].append(time.perf_counter() - t0)
                cpu[side].append(time.process_time() - c0)
        n = ours.num_params()
        out[name] = {side: batch * seq / statistics.median(cpu[side]) for side in cpu}
        out[name].update({f"{side}_wall": batch * seq / statistics.median(wall[side]) for side in wall})
        out[name]["params_M"] = round(n / 1e6, 2)
        print(f"{name:6s} {n / 1e6:5.1f}M params: ours {out[name]['ours']:6.0f} tok/s (wall {out[name]['ours_wall']:6.0f}),"
              f" transformers {out[name]['peer']:6.0f} (wall {out[name]['peer_wall']:6.0f}); ratio "
              f"{out[name]['ours'] / out[name]['peer']:.2f} (wall {out[name]['ours_wall'] / out[name]['peer_wall']:.2f})",
              flush=True)
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def mem_child(kind: str, T: int) -> None:
    """Run one attention forward + backward; print the peak RSS growth (MB) over the inputs, sampled
    every 0.2 ms by a thread (torch ops release the GIL)."""
    import threading

    import torch.nn.functional as F

    from llmlab.model.flash import flash_attention, naive_attention
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, 4, T, 64, generator=g) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    flash_attention(q[:, :, :256], k[:, :, :256], v[:, :, :256])  # import / first-call overheads out
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.0002)
    th = threading.Thread(target=sample)
    th.start()
    t0 = time.perf_counter()
    if kind == "naive":
        out = naive_attention(q, k, v, causal=True)
    elif kind == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        out = flash_attention(q, k, v, causal=True, block=256)
    out.backward(dout)
    secs = time.perf_counter() - t0
    done.set()
    th.join()
    print(json.dumps({"peak_mb": max(peak[0], _rss_mb()) - base, "seconds": secs}))


def memory_table(T: int) -> dict:
    res = {}
    for kind in ("naive", "flash", "sdpa"):
        p = subprocess.run([sys.executable, __file__, "--mem-child", kind, "--mem-tokens", str(T)],
                           capture_output=True, text=True, check=True)
        res[kind] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"attention T={T} {kind:5s}: peak +{res[kind]['peak_mb']:7.1f} MB, fwd+bwd "
              f"{res[kind]['seconds']:.2f} s", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 repeats of a 4 x 128 batch (~1 min on 1 idle core)")
    ap.add_argument("--repeats", type=int, default=0, help="timed steps per side (default 9; 3 with --quick)")
    ap.add_argument("--batch", type=int, default=0, help="default 8 (4 with --quick)")
    ap.add_argument("--seq", type=int, default=0, help="default 256 (128 with --quick)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--mem-tokens", type=int, default=4096)
    ap.add_argument("--mem-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        return mem_child(args.mem_child, args.mem_tokens)
    from llmlab.device import setup_threads
    setup_threads()
    repeats = args.repeats or (3 if args.quick else 9)
    batch, seq = args.batch or (4 if args.quick else 8), args.seq or (128 if args.quick else 256)
    rates = train_rates(repeats, batch, seq, args.vocab)
    mem = memory_table(args.mem_tokens)
    ours = {f"{k}_train_tok_s{w}": round(v["ours" + w], 1) for k, v in rates.items() for w in ("", "_wall")}
    peer = {f"{k}_train_tok_s{w}": round(v["peer" + w], 1) for k, v in rates.items() for w in ("", "_wall")}
    ours["attn_peak_mb_4k"], peer["attn_peak_mb_4k"] = round(mem["flash"]["peak_mb"], 1), round(mem["naive"]["peak_mb"], 1)
    peer["sdpa_attn_peak_mb_4k"] = round(mem["sdpa"]["peak_mb"], 1)
    ratio = {f"{k}_train_tok_s": round(v["ours"] / v["peer"], 3) for k, v in rates.items()}
    ratio.update({f"{k}_train_tok_s_wall": round(v["ours_wall"] / v["peer_wall"], 3) for k, v in rates.items()})
    ratio["flash_mem"] = round(mem["naive"]["peak_mb"] / max(mem["flash"]["peak_mb"], 1.0), 2)
    print(json.dumps({"benchmark": "zoo", "config": {"batch": batch, "seq": seq, "repeats": repeats,
                                                     "threads": torch.get_num_threads(),
                                                     "params_M": {k: v["params_M"] for k, v in rates.items()}},
                      "ours": ours, "peer": peer, "ratio": ratio}))


if __name__ == "__main__":
    main()
