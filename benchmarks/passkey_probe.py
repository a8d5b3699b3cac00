"""Probe a checkpoint of `llmlab longctx` for passkey retrieval while it trains (no scaling).

    python benchmarks/passkey_probe.py runs/longctx/base/checkpoint-600/model runs/ablate/corpus/tokenizer --length 256

Prints whole-key accuracy and per-answer-token accuracy on held-out keys with the evaluation's filler
at each depth, then the standard JSON line (peer: a model that never retrieves, 0).

    --copy-periods 64 40 25 --val-shards runs/ablate/corpus/shards/val

also prints, per period h, the loss on 16 held-out windows of h tokens repeated to 129 tokens: on
the first copy and on the repeats. An induction head (content match) lowers the repeats at every
period; a fixed-offset head only at its own offset (docs/model.md, session 5).
"""
from __future__ import annotations

import argparse
import json
import random

import torch


class _Bytes:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def _copy_losses(model, shards: str, periods: list[int], rows: int = 16, length: int = 129) -> dict:
    from llmlab.data.shards import open_shards
    val = torch.cat([torch.from_numpy(s.tokens.astype("int64")) for s in open_shards(shards)])
    out = {}
    for h in periods:
        rep = val[: rows * h].view(rows, h).repeat(1, length // h + 1)[:, :length]
        with torch.no_grad():
            nll = torch.nn.functional.cross_entropy(model(rep[:, :-1]).float().transpose(1, 2), rep[:, 1:],
                                                    reduction="none")
        out[str(h)] = {"first": round(float(nll[:, : h - 1].mean()), 3), "repeats": round(float(nll[:, h:].mean()), 3)}
        print(f"period {h}: loss on the first copy {out[str(h)]['first']:.2f}, on the repeats {out[str(h)]['repeats']:.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir", nargs="?", help="an HF-style model dir (with --quick and none: a random toy model)")
    ap.add_argument("tokenizer_dir", nargs="?")
    ap.add_argument("--length", type=int, nargs="+", default=[256])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--per-cell", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="2 keys per cell")
    ap.add_argument("--copy-periods", type=int, nargs="*", default=[], help="repeat held-out windows at these periods")
    ap.add_argument("--val-shards", default="runs/ablate/corpus/shards/val", help="held-out shards for --copy-periods")
    args = ap.parse_args()
    from llmlab.eval.passkey import PasskeyTask, retrieved
    from llmlab.model.hf import load_hf_dir
    from llmlab.tokenizer.bpe import load_tokenizer
    torch.set_num_threads(1)
    if args.model_dir and args.tokenizer_dir:
        model, tok = load_hf_dir(args.model_dir).eval(), load_tokenizer(args.tokenizer_dir)
    elif args.quick:  # smoke run: a random 1-layer model over bytes (retrieves ~nothing)
        from llmlab.model import ModelConfig, Transformer
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=max(args.length))).eval()
        tok = _Bytes()
    else:
        ap.error("give model_dir and tokenizer_dir (or --quick for a smoke run)")
    task = PasskeyTask(tok, keys="held_out")
    per = 2 if args.quick else args.per_cell
    out = {}
    for length in args.length:
        keys = tokens = n_tok = 0
        for j, d in enumerate(args.depths):
            ex = [task.make(length, d, random.Random(f"probe-{length}-{j}-{i}")) for i in range(per)]
            hits = retrieved(model, ex, batch_size=4)
            with torch.no_grad():
                ids = torch.tensor([e.ids for e in ex])
                pred = model(ids[:, :-1]).argmax(-1)
            for row, e in enumerate(ex):
                s = e.answer_start
                tokens += int((pred[row, s - 1:] == ids[row, s:]).sum())
                n_tok += len(e.ids) - s
            keys += sum(hits)
            print(f"length {length} depth {d:.2f}: {sum(hits)}/{per} keys")
        out[str(length)] = {"keys": keys / (per * len(args.depths)), "answer_tokens": tokens / n_tok}
        print(f"length {length}: keys {out[str(length)]['keys']:.3f} answer tokens {out[str(length)]['answer_tokens']:.3f}")
    if args.copy_periods:
        out["copy"] = _copy_losses(model, args.val_shards, args.copy_periods)
    first = out[str(args.length[0])]["keys"]
    print(json.dumps({"benchmark": "passkey_probe", "ours": out, "peer": {"keys": 0.0},
                      "ratio": {"keys_minus_blind": first}}))


if __name__ == "__main__":
    main()
