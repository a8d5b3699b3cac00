"""Train the base model of `llmlab longctx` quickly, probing passkey retrieval at 1x T as it trains.

    python benchmarks/passkey_recipe.py --out runs/lc8 --heads 4 --layers 2 --steps 3000
    llmlab longctx output_dir=runs/lc8 ...      # then finds runs/lc8/base/model and measures the scalings

The same rows as `llmlab longctx` (llmlab/ablate/mix.py: passkey rows with training keys and training
filler, answer-only loss; repeated-text rows with random periods; corpus rows), the same model family,
a plain AdamW loop (linear warmup, constant rate, clip 1) without the trainer's checkpoints and logs:
on a shared 2-core machine a step costs what the model costs. Every --every steps it probes retrieval
on 40 held-out keys (8 per depth 0, .25, .5, .75, 1) in the evaluation's filler, from seeds no other
probe or evaluation uses (the VALIDATION keys; `llmlab longctx` draws its test keys from other seeds),
and saves the model to OUT/base/model (HF layout) with recipe.json beside it.

--decay-from S: the rate stays constant to step S, then falls linearly to --min-lr x rate at the last
step (warmup-stable-decay). --keep-every K: also keeps OUT/base/ckpt/step_N every K steps, and at the end
`--select best` copies the kept checkpoint with the most validation keys (ties: the later step) to
OUT/base/model and writes OUT/base/selected.json; `--select last` (the default) leaves the last model.
--endpoint-share S: a share S of the passkey rows has the needle at exactly depth 0 or 1 (mix.py).
--stop-full N: stop after N probes in a row retrieve every validation key (0: run all --steps).

Last line: {"benchmark": "passkey_recipe", "ours": {"keys": .., "answer_tokens": ..}, "peer": {"keys": 0.0}, ...}
(peer: a model that never retrieves).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def probe(model, examples) -> tuple[float, float]:
    """(share of whole keys retrieved, share of answer tokens right), teacher-forced greedy."""
    from llmlab.eval.passkey import retrieved
    model.eval()
    hits = retrieved(model, examples, 8)
    with torch.no_grad():
        ids = torch.tensor([e.ids for e in examples])
        pred = model(ids[:, :-1]).argmax(-1)
    right = sum(int((pred[r, e.answer_start - 1:] == ids[r, e.answer_start:]).sum()) for r, e in enumerate(examples))
    total = sum(len(e.ids) - e.answer_start for e in examples)
    model.train()
    return sum(hits) / len(hits), right / total


def lr_at(step: int, a) -> float:
    """Linear warmup, then constant, then (from --decay-from) linear decay to --min-lr x the rate."""
    lr = a.lr * min(1.0, (step + 1) / a.warmup)
    if a.decay_from and step >= a.decay_from:
        frac = (step - a.decay_from) / max(1, a.steps - a.decay_from)
        lr *= 1.0 - (1.0 - a.min_lr) * min(1.0, frac)
    return lr


def select_best(base: Path, lines: list[dict]) -> dict:
    """Copy the kept checkpoint with the most validation keys (ties: later step) to base/model."""
    import shutil
    kept = [ln for ln in lines if (base / "ckpt" / f"step_{ln['step']}").is_dir()]
    if not kept:
        return {}
    best = max(kept, key=lambda ln: (ln["keys"], ln["step"]))
    tmp = base / "model.selecting"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base / "ckpt" / f"step_{best['step']}", tmp)
    shutil.rmtree(base / "model", ignore_errors=True)
    tmp.rename(base / "model")
    (base / "selected.json").write_text(json.dumps({"rule": "most validation keys, ties the later step", **best}))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/passkey_recipe",
                    help="writes OUT/base/model, OUT/base/recipe.json, OUT/base/probe.jsonl")
    ap.add_argument("--corpus-dir", default="runs/ablate/corpus")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--decay-from", type=int, default=0, help="step where linear decay starts (0: constant rate)")
    ap.add_argument("--min-lr", type=float, default=0.1, help="the rate at the last step, as a share of --lr")
    ap.add_argument("--keep-every", type=int, default=0, help="keep OUT/base/ckpt/step_N every K steps (0: none)")
    ap.add_argument("--select", choices=("last", "best"), default="last",
                    help="best: OUT/base/model becomes the kept checkpoint with the most validation keys")
    ap.add_argument("--endpoint-share", type=float, default=0.0,
                    help="share of passkey rows with the needle at exactly depth 0 or 1 (half each)")
    ap.add_argument("--stop-full", type=int, default=0,
                    help="stop after N probes in a row at 100%% validation keys (0: never)")
    ap.add_argument("--passkey-fraction", type=float, default=0.5)
    ap.add_argument("--copy-fraction", type=float, default=0.25)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a tiny corpus and 20 steps (smoke run)")
    a = ap.parse_args()
    from llmlab.ablate.corpus import prepare_corpus
    from llmlab.ablate.mix import PasskeyMixLoader
    from llmlab.data.loader import TokenWindowLoader
    from llmlab.eval.passkey import PasskeyTask
    from llmlab.model.config import ModelConfig
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer.bpe import load_tokenizer
    torch.set_num_threads(1)
    if a.quick:
        a.steps, a.every, a.corpus_dir = 20, 10, a.corpus_dir.rstrip("/") + "-quick"
    corpus = prepare_corpus(a.corpus_dir, 300 if a.quick else 10_000, 2048, progress=False)
    tok = load_tokenizer(corpus["tokenizer"])
    T = a.context
    train_task = PasskeyTask(tok, keys="train")
    loader = PasskeyMixLoader(TokenWindowLoader(corpus["train"], T, a.batch, seed=a.seed), train_task, T,
                              a.passkey_fraction, seed=a.seed, copy_fraction=a.copy_fraction,
                              passkey_loss="answer", copy_period="random",
                              endpoint_share=a.endpoint_share)
    task = PasskeyTask(tok, keys="held_out")
    examples = [task.make(T, d, random.Random(f"recipe-probe-{j}-{i}"))
                for j, d in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]) for i in range(8)]
    torch.manual_seed(a.seed)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=a.hidden, num_hidden_layers=a.layers,
                                    num_attention_heads=a.heads, max_position_embeddings=T,
                                    eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0, betas=(0.9, 0.95))
    base = Path(a.out) / "base"
    base.mkdir(parents=True, exist_ok=True)
    (base / "recipe.json").write_text(json.dumps(vars(a), indent=1))
    t0, step, keys, tokens, lines, full = time.perf_counter(), 0, 0.0, 0.0, [], 0
    while step < a.steps and not (a.stop_full and full >= a.stop_full):
        for x, y in loader:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, a)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % a.every == 0 or step == a.steps:
                keys, tokens = probe(model, examples)
                save_hf_dir(model, base / "model")
                if a.keep_every and step % a.keep_every == 0:
                    save_hf_dir(model, base / "ckpt" / f"step_{step}")
                line = {"step": step, "loss": round(loss.item(), 4), "keys": keys, "answer_tokens": round(tokens, 4),
                        "lr": round(lr_at(step - 1, a), 6),
                        "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time(), 1)}
                lines.append(line)
                with open(base / "probe.jsonl", "a") as f:
                    f.write(json.dumps(line) + "\n")
                print(json.dumps(line), flush=True)
                full = full + 1 if keys == 1.0 else 0
            if step >= a.steps or (a.stop_full and full >= a.stop_full):
                break
    if a.select == "best" and (best := select_best(base, lines)):
        keys, tokens, step = best["keys"], best["answer_tokens"], best["step"]
        print(json.dumps({"selected": best}), flush=True)
    print(json.dumps({"benchmark": "passkey_recipe", "ours": {"keys": keys, "answer_tokens": tokens, "steps": step},
                      "peer": {"keys": 0.0}, "ratio": {"keys_minus_blind": keys}}))


if __name__ == "__main__":
    main()
