#!/usr/bin/env python
"""Validate the passkey prompt and scoring on a real model (SmolLM2-135M-Instruct, which has induction
heads): if it retrieves at its trained lengths, format and scoring are sound."""
import random, torch, time
torch.set_num_threads(1)
from llmlab.model.load import load_model
from llmlab.tokenizer.bpe import load_tokenizer
from llmlab.eval.passkey import PasskeyTask, retrieved
model, path = load_model("smollm2"); model.eval()
tok = load_tokenizer(path)
task = PasskeyTask(tok)
print("digits per key (tokens):", len(tok.encode(" 71432")), tok.encode(" 71432"))
for length in (128, 512):
    rng = random.Random(f"smol-{length}")
    ex = [task.make(length, d, rng) for d in (0.0, 0.25, 0.5, 0.75, 1.0) for _ in range(4)]
    t = time.time(); hits = retrieved(model, ex, batch_size=4)
    distinct = [len(set(e.key)) == len(e.key) for e in ex]
    print(length, "retrieved %d/%d" % (sum(hits), len(hits)), "distinct-digit keys %d/%d, repeated %d/%d" % (
        sum(h for h, d in zip(hits, distinct) if d), sum(distinct), sum(h for h, d in zip(hits, distinct) if not d),
        len(ex) - sum(distinct)), "%.0fs" % (time.time() - t), flush=True)
