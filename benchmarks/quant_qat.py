"""QAT vs PTQ at int4 on a model trained here in fp32 (the speedrun model), same held-out text.

    OMP_NUM_THREADS=1 python benchmarks/quant_qat.py --model runs/speedrun/train/model \
        --data-dir runs/speedrun/data [--steps 150] [--lr 1e-4] [--quick]

Rows, all int`--bits` (default 4) with one scale per --group weights of a row, every block Linear (the tied
embedding / LM head stays fp32), scored on the same held-out windows (the wiki_en documents of the
data build's val.jsonl, which pretraining never saw):
  RTN symmetric / zero-point, GPTQ symmetric / zero-point (calibration: train.jsonl windows);
  QAT: fake quantization with the straight-through estimator (llmlab.quant.qat, symmetric, absmax
       scales; --learn-scale for LSQ), fine-tuned --steps steps on train.jsonl windows, exported;
  FT + RTN: the same steps of plain fp32 fine-tuning, then RTN (is QAT's gain more than the
       extra training?).
--lr is chosen with --sweep-lr on a validation part of train.jsonl (documents with
is_val(text, 0.05, seed=1), never the held-out text). Last line: the standard JSON object with
ratios qat_vs_rtn = RTN sym ppl / QAT ppl, qat_vs_gptq and qat_vs_ft_rtn likewise (perplexity
ratios: at int4 a small model's deltas can be ~0 or negative, where a ratio of deltas is noise).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from llmlab.data.split import is_val
from llmlab.quant import calibrate
from llmlab.quant.apply import quantize_model
from llmlab.quant.qat import export, prepare_qat


def train(model, windows: torch.Tensor, steps: int, batch: int, lr: float, seed: int = 0) -> float:
    """AdamW on next-token cross-entropy, linear warmup over 10 % of the steps then constant;
    -> the mean loss of the last 10 steps."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    model.train()
    losses = []
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / warm)
        b = windows[torch.randint(0, windows.shape[0], (batch,), generator=g)]
        logits = model(b)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return sum(losses[-10:]) / len(losses[-10:])


def qat(base, windows, a, lr: float):
    m = copy.deepcopy(base)
    prepare_qat(m, bits=a.bits, group=a.group, learn_scale=a.learn_scale)
    train(m, windows, a.steps, a.batch, lr)
    export(m)
    return m


def finetune_rtn(base, windows, a, lr: float):
    m = copy.deepcopy(base)
    train(m, windows, a.steps, a.batch, lr)
    quantize_model(m, "rtn", bits=a.bits, group=a.group, sym=True)
    return m


def byte_model(docs: list[str], steps: int, length: int):
    """No --model: a tiny LLaMA over bytes (256 byte tokens + EOS), pretrained here in fp32 for
    `steps` steps on `docs`, so the benchmark runs with nothing but the package data."""
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer.bpe import ByteLevelBPE
    tok = ByteLevelBPE([bytes([i]) for i in range(256)] + [None], [], {"<|endoftext|>": 256},
                       eos_token="<|endoftext|>")
    model = Transformer(ModelConfig(vocab_size=257, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=length))
    train(model, calibrate.token_windows(tok, docs, steps * 8, length, seed=3), steps, 8, 3e-3)
    return model, tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="", help="an HF-style model dir trained here (e.g. the speedrun's); "
                    "none: a tiny byte-level model pretrained here first (a smoke test)")
    ap.add_argument("--data-dir", default="", help="its `llmlab data build` output (train.jsonl, val.jsonl); "
                    "none: the Wikipedia extracts split as the data pipeline splits them")
    ap.add_argument("--quick", action="store_true", help="a tiny slice: ~1 minute")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--group", type=int, default=64, help="weights per scale (-1: one per row)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--learn-scale", action="store_true")
    ap.add_argument("--sweep-lr", default="", help="comma-separated lrs: QAT scored on the validation part of "
                    "train.jsonl only (choose --lr with it; the held-out text is not touched)")
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--calib-windows", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if a.quick:
        a.steps, a.eval_windows, a.calib_windows = 20, 8, 8
    train_docs = calibrate.split_texts(a.data_dir, "train") if a.data_dir else calibrate.wiki_split(False)
    heldout_docs = calibrate.split_texts(a.data_dir, "val") if a.data_dir else calibrate.wiki_split(True)
    if a.model:
        from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
        base, tok = load_model_and_tokenizer(a.model)
        base.__dict__.pop("quantized", None)
    else:
        base, tok = byte_model([t for t in train_docs if not is_val(t, 0.05, 1)], 150, a.length)
        base.eval()
    val_docs = [t for t in train_docs if is_val(t, 0.05, 1)]
    fit_docs = [t for t in train_docs if not is_val(t, 0.05, 1)]
    windows = calibrate.token_windows(tok, fit_docs, a.steps * a.batch, a.length, seed=2)
    t0 = time.perf_counter()
    if a.sweep_lr:
        val = calibrate.token_windows(tok, val_docs, a.eval_windows, a.length)
        fp = calibrate.perplexity(base, val).perplexity
        res = {lr: calibrate.perplexity(qat(base, windows, a, lr), val).perplexity
               for lr in map(float, a.sweep_lr.split(","))}
        for lr, ppl in res.items():
            print(f"QAT lr {lr:g}: validation ppl {ppl:.4f} (fp32 {fp:.4f})", flush=True)
        best = min(res, key=res.get)
        print(json.dumps({"benchmark": "quant_qat_lr_sweep", "ours": {str(k): v for k, v in res.items()},
                          "peer": {"fp32": fp}, "ratio": {"best_lr": best}}))
        return
    ev = calibrate.token_windows(tok, heldout_docs, a.eval_windows, a.length)
    cal = calibrate.token_windows(tok, fit_docs, a.calib_windows, a.length, seed=1)
    fp = calibrate.perplexity(base, ev).perplexity
    print(f"fp32 ppl {fp:.4f} ({a.eval_windows} x {a.length} held-out tokens)", flush=True)
    rows = {}
    for key, method, sym in (("rtn_sym", "rtn", True), ("rtn_zp", "rtn", False),
                             ("gptq_sym", "gptq", True), ("gptq_zp", "gptq", False)):
        m = copy.deepcopy(base)
        quantize_model(m, method, bits=a.bits, group=a.group, sym=sym, calib=cal)
        rows[key] = calibrate.perplexity(m, ev).perplexity
        print(f"{key}: {rows[key]:.4f}", flush=True)
    t = time.perf_counter()
    rows["qat"] = calibrate.perplexity(qat(base, windows, a, a.lr), ev).perplexity
    print(f"qat: {rows['qat']:.4f} ({time.perf_counter() - t:.0f}s)", flush=True)
    rows["ft_rtn_sym"] = calibrate.perplexity(finetune_rtn(base, windows, a, a.lr), ev).perplexity
    print(f"ft_rtn_sym: {rows['ft_rtn_sym']:.4f}", flush=True)
    labels = {"rtn_sym": "PTQ RTN symmetric", "rtn_zp": "PTQ RTN zero-point", "gptq_sym": "PTQ GPTQ symmetric",
              "gptq_zp": "PTQ GPTQ zero-point", "qat": f"QAT (STE{', LSQ' if a.learn_scale else ''}, symmetric), "
              f"{a.steps} steps", "ft_rtn_sym": f"fp32 fine-tune {a.steps} steps, then RTN symmetric"}
    print(f"\n| int{a.bits} {'per-channel' if a.group <= 0 else f'g{a.group}'} | held-out ppl | delta vs fp32 |\n|---|---|---|\n| fp32 | {fp:.3f} | |")
    for k, ppl in rows.items():
        print(f"| {labels[k]} | {ppl:.3f} | {ppl - fp:+.3f} ({100 * (ppl - fp) / fp:+.1f}%) |")
    # perplexity ratios: at int4 the deltas of a small model can be ~0 or negative, where a ratio
    # of deltas means nothing
    ratio = {"qat_vs_rtn": rows["rtn_sym"] / rows["qat"], "qat_vs_gptq": rows["gptq_sym"] / rows["qat"],
             "qat_vs_ft_rtn": rows["ft_rtn_sym"] / rows["qat"]}
    print(json.dumps({"benchmark": "quant_qat", "ours": {"fp32": fp, **rows}, "peer": {},
                      "ratio": ratio, "conditions": {"model": a.model, "steps": a.steps, "batch": a.batch,
                                                     "length": a.length, "lr": a.lr, "bits": a.bits, "group": a.group,
                                                     "eval_tokens": a.eval_windows * a.length, "threads": 1,
                                                     "seconds": time.perf_counter() - t0}}))


if __name__ == "__main__":
    main()
