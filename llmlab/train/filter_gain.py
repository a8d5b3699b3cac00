"""Does model-based filtering of pretraining data pay? A controlled run of `llmlab.train.train`.

Corpus: English Wikipedia pages plus the same number of junk pages (each a real page with its
words shuffled: the kind of text the filters exist to remove; CCNet's "tail"). Train the same
byte-level model for the same number of tokens on (a) the raw mixture and (b) the mixture after
`llmlab.data.refine`'s quality classifier and perplexity filter (trained on reference pages that
are in neither the corpus nor the test set), and compare loss on held-out clean Wikipedia.

    python -m llmlab.train.filter_gain        # the table in docs/data.md
"""
from __future__ import annotations

import itertools
import random
import tempfile

import numpy as np
import torch


def corpora(seed: int, n_pages: int = 300):
    from llmlab.data.model_filter import NgramLM, QualityClassifier
    from llmlab.data.sources import poetry_en, wiki_en
    pages = list(itertools.islice(wiki_en(), 600 + n_pages + 100))
    ref, clean, test = pages[:600], pages[600:600 + n_pages], pages[600 + n_pages:]
    rng = random.Random(seed)
    junk = []
    for p in rng.sample(clean, len(clean)):
        ws = p.split()
        rng.shuffle(ws)
        junk.append(" ".join(ws))
    raw = clean + junk
    rng.shuffle(raw)
    shuffled_ref = []
    for p in ref[:100]:  # junk-like negatives made from reference pages, never from the corpus
        ws = p.split()
        rng.shuffle(ws)
        shuffled_ref.append(" ".join(ws))
    negatives = list(itertools.islice(poetry_en(), 300)) + shuffled_ref  # stand-in for random web text
    clf = QualityClassifier().fit(ref[:500], negatives)
    lm = NgramLM(3).fit(ref[:500])
    cut = float(np.quantile([lm.perplexity(t) for t in ref[500:]], 0.95))
    kept = [t for t in raw if clf.score([t])[0] >= 0.5 and lm.perplexity(t) <= cut]
    return raw, kept, test


def run(seed: int, steps: int = 300) -> dict:
    from llmlab.model import ModelConfig, Transformer
    from llmlab.train import TokenArrayLoader, TrainConfig, train
    raw, kept, test = corpora(seed)
    res = {"seed": seed, "raw_docs": len(raw), "kept_docs": len(kept)}
    test_tok = torch.tensor(list("\n".join(test).encode()))[:40_000]
    for name, docs in (("raw", raw), ("filtered", kept)):
        torch.manual_seed(seed)
        model = Transformer(ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=64))
        tokens = torch.tensor(list("\n".join(docs).encode()))
        with tempfile.TemporaryDirectory() as out:
            r = train(TrainConfig(output_dir=out, max_steps=steps, max_length=64, per_device_train_batch_size=16,
                                  learning_rate=3e-3, warmup_steps=20, logging_steps=steps, disable_tqdm=True,
                                  report_to=["jsonl"], peak_flops=1e9, eval_batches=0, seed=seed),
                      model, TokenArrayLoader(tokens, 64, 16), TokenArrayLoader(test_tok, 64, 16, loop=False))
        res[f"{name}_test_loss"] = r.val_loss
    return res


def main() -> None:
    from llmlab.device import setup_threads

    setup_threads(1)
    rows = [run(s) for s in (0, 1, 2)]
    print("| seed | documents raw -> kept | held-out loss, raw | held-out loss, filtered |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['raw_docs']} -> {r['kept_docs']} | {r['raw_test_loss']:.4f} | "
              f"{r['filtered_test_loss']:.4f} |")


if __name__ == "__main__":
    main()
