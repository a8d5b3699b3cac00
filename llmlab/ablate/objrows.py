"""The objective and architecture rows of `llmlab ablate` (causal LM vs prefix LM vs UL2, decoder-only
vs encoder-decoder): built with llmlab.train.objectives (setup.make), trained at the grid's FLOP
budget, and scored on two held-out metrics so every row is comparable:

(a) causal bits per byte: the raw validation windows through the model as a plain causal LM (a
    prefix decoder with no prefix, i.e. a causal mask; the same loader and token-weighted mean as the
    trainer's evaluation). An encoder-decoder has no causal score: None, shown "n/a".
(b) span infilling: T5 span corruption of the same validation windows (noise 0.15, mean span 3,
    fixed seed, so every model sees the same corruptions), cross-entropy per target token (nats)
    of the targets `<X> span <Y> span ...` given the corrupted input; also over the span tokens alone
    (the sentinels excluded: a model never trained on sentinels pays mostly for those). Encoder-decoder: the encoder
    reads the input, the decoder predicts the targets; prefix decoder: the input is a bidirectional
    prefix; causal decoder: the input is a causal prefix in the same row (labels on the targets only).

All models of these rows share one vocabulary: the data's plus every sentinel and UL2 mode token
(RESERVE), so a causal LM can be scored on the infilling targets at all (its sentinel embeddings
only ever appear as inputs here: untrained, which is the point of the comparison).
"""
from __future__ import annotations

import itertools
import math

INFILL_SEED = 1234


def reserve_tokens() -> list[str]:
    from llmlab.train.objectives import build_objective
    return list(dict.fromkeys([*build_objective("ul2").special_tokens,
                               *build_objective("span_corruption").special_tokens]))


def is_objective_row(row) -> bool:
    return "objective" in row.train or "architecture" in row.train


def build(cfg, row, mcfg, vocab: int, eos, seed: int):
    """-> (Setup, model FLOPs per token) for a row of these groups; mcfg: its decoder's ModelConfig."""
    from llmlab.train.objectives.setup import make
    st = make(row.train.get("objective", "causal_lm"), mcfg, vocab, row.train.get("architecture", ""), eos, seed,
              reserve_tokens=tuple(reserve_tokens()))
    if st.layout == "seq2seq":
        from llmlab.model.encdec import flops_per_token
    else:
        from llmlab.model.transformer import flops_per_token
    return st, flops_per_token(st.model.config, cfg.context)


def causal_bpb(model, windows, bytes_per_token: float) -> float:
    """Token-weighted mean next-token loss over one pass of (x, y) windows, in bits per byte."""
    import torch
    import torch.nn.functional as F
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in itertools.islice(windows, len(windows)):  # the loader is endless: one pass
            logits = model(x)
            total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
            n += y.numel()
    return total / n / math.log(2) / bytes_per_token


def infill_loss(model, ids: dict, layout: str, windows) -> tuple[float, float]:
    """Span corruption over one pass of windows -> mean cross-entropy (nats) per target token, over
    all targets and over the dropped tokens only (targets less the sentinels that delimit them)."""
    import torch
    import torch.nn.functional as F

    from llmlab.train.objectives import IGNORE, ObjectiveLoader, build_objective
    from llmlab.train.objectives.setup import PAD
    c, obj = model.config, build_objective("span_corruption")
    pad = ids.get(PAD, getattr(c, "pad_token_id", None) or 0)
    loader = ObjectiveLoader(windows, obj, ids, layout, pad, None, getattr(c, "decoder_start_token_id", 0), INFILL_SEED)
    sentinels = torch.tensor([ids[t] for t in obj.special_tokens])
    total = torch.zeros(4, dtype=torch.float64)  # loss, count: all targets; loss, count: span tokens
    model.eval()
    with torch.no_grad():
        for inputs, labels in itertools.islice(loader, len(windows)):
            logits = model(**inputs)
            ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
            keep = labels.flatten() != IGNORE
            span = keep & ~torch.isin(labels.flatten(), sentinels)
            total += torch.stack([ce[keep].sum(), keep.sum(), ce[span].sum(), span.sum()]).double()
    return float(total[0] / total[1]), float(total[2] / total[3])


def train_one(cfg, row, seed: int, corpus: dict, tok, run_dir, mcfg, ref_fpt: float) -> dict:
    """Train one (row, seed) of the objective/architecture groups at the reference's FLOPs -> results line."""
    import torch

    from llmlab.data.loader import TokenWindowLoader
    from llmlab.train.config import TrainConfig
    from llmlab.train.trainer import train
    st, fpt = build(cfg, row, mcfg, tok.vocab_size, tok.eos_id, seed)
    steps = max(1, round(cfg.max_steps * ref_fpt / fpt))
    torch.manual_seed(seed)
    tl = st.loader(TokenWindowLoader(corpus["train"], cfg.context, cfg.batch_size, seed=seed), seed)
    tcfg = TrainConfig(output_dir=str(run_dir), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                       max_length=cfg.context, learning_rate=cfg.learning_rate, warmup_steps=max(1, steps // 20),
                       seed=seed, device="cpu", report_to=["jsonl"], save_steps=cfg.save_steps, save_total_limit=1,
                       resume_from_checkpoint="auto", eval_batches=0, bytes_per_token=0.0,
                       peak_flops=1e12, disable_tqdm=True, logging_steps=max(1, steps // 10), spike_guard="off")
    res = train(tcfg, st.model, tl, None, model_flops_per_token=fpt)
    val_batch = max(1, min(cfg.batch_size, 4096 // cfg.context))
    val = lambda: TokenWindowLoader(corpus["val"], cfg.context, val_batch, shuffle=False)  # noqa: E731
    bpb = None if st.layout == "seq2seq" else causal_bpb(st.model, val(), corpus["bytes_per_token"])
    infill, infill_span = infill_loss(st.model, st.ids, st.layout, val())
    n_params = sum(p.numel() for p in st.model.parameters())
    return {"row": row.name, "group": row.group, "key": row.key, "seed": seed, "signature": cfg.signature(),
            "val_bpb": bpb, "infill_loss": infill, "infill_span_loss": infill_span, "layout": st.layout, "train_loss": res.train_loss,
            "steps": res.step, "tokens": res.tokens, "params": n_params, "flops_per_token": fpt,
            "train_flops": fpt * res.tokens, "seconds": round(res.seconds, 1)}
