"""Forward-pass speed: our Transformer vs transformers' LlamaForCausalLM on SmolLM2-135M weights.

Prefill: tokens/s to process a 512-token prompt and produce next-token logits.
Decode: tokens/s generating one token at a time at batch 1 with a KV cache (greedy).
Both sides run alternately in one process; medians of the repeats. Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter decode (< 1 min)")
    ap.add_argument("--prompt-len", type=int, default=512)
    args = ap.parse_args()
    repeats, new_tokens = (3, 32) if args.quick else (7, 128)

    from transformers import LlamaConfig, LlamaForCausalLM

    from llmlab.device import setup_threads
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.hf import config_to_hf
    from llmlab.model.load import packaged_path

    threads = setup_threads()
    path = packaged_path("smollm2")
    ours = load_gguf(path)
    # the peer gets the very same fp32 weights (tests/test_model_parity.py checks them against
    # transformers' own GGUF loader); building it this way skips a second 20 s dequantization
    peer = LlamaForCausalLM(LlamaConfig(**config_to_hf(ours.config))).eval()
    peer.load_state_dict(ours.state_dict(), strict=False)
    peer.tie_weights()
    assert torch.equal(peer.lm_head.weight, ours.lm_head.weight)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 40000, (1, args.prompt_len), generator=g)
    short = prompt[:, :16]

    def prefill_ours():
        ours(prompt, last_only=True)

    def prefill_peer():
        peer(prompt, logits_to_keep=1, use_cache=False)

    def decode_ours():
        n = sum(1 for _ in generate_ids(ours, short[0].tolist(), SamplingParams(max_new_tokens=new_tokens)))
        assert n == new_tokens

    def decode_peer():
        out = peer.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=2)
        assert out.shape[1] == short.shape[1] + new_tokens

    def timeit(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    times = {k: [] for k in ("prefill_ours", "prefill_peer", "decode_ours", "decode_peer")}
    with torch.inference_mode():
        for fn in (prefill_ours, prefill_peer, decode_ours, decode_peer):  # warm-up
            fn()
        for r in range(repeats):
            pairs = [(("prefill_ours", prefill_ours), ("prefill_peer", prefill_peer)),
                     (("decode_ours", decode_ours), ("decode_peer", decode_peer))]
            for pair in pairs:  # alternate who goes first, so neither side always follows the other
                for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                    times[name].append(timeit(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "benchmark": "forward",
        "ours": {"prefill_tok_s": args.prompt_len / med["prefill_ours"], "decode_tok_s": new_tokens / med["decode_ours"]},
        "peer": {"prefill_tok_s": args.prompt_len / med["prefill_peer"], "decode_tok_s": new_tokens / med["decode_peer"]},
        "config": {"model": "SmolLM2-135M-Instruct fp32", "threads": threads, "repeats": repeats,
                   "prompt_len": args.prompt_len, "decode_tokens": new_tokens, "peer_name": "transformers"},
    }
    res["ratio"] = {k: res["ours"][k] / res["peer"][k] for k in ("prefill_tok_s", "decode_tok_s")}
    print(f"prefill tok/s  ours {res['ours']['prefill_tok_s']:8.1f}   transformers {res['peer']['prefill_tok_s']:8.1f}")
    print(f"decode  tok/s  ours {res['ours']['decode_tok_s']:8.1f}   transformers {res['peer']['decode_tok_s']:8.1f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
