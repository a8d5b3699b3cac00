"""`llmlab distill`: train a small student from a teacher (logit KD, feature KD, data-free KD, sequence-level
KD) and compare it with the same student trained without KD at equal steps.

Text: the training split of the Wikipedia extracts (llmlab.quant.calibrate). A validation split is
held apart inside it (documents with `is_val(text, 0.05, seed=1)`), used only to choose alpha and T
(`sweep_alpha=`, `sweep_temperature=`); the held-out eval text (the data pipeline's validation
documents) is scored only for the final runs. The teacher runs once over the training windows and
its top-k logits (and, for feature KD, its mapped hidden states and last attention map) are kept,
on disk with `teacher_cache=FILE.safetensors`, reused by every arm, seed and sweep point.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field

import torch

from llmlab.checkpoint import atomic_path
from llmlab.errors import UserError

VAL_FRACTION, VAL_SEED = 0.05, 1


@dataclass
class DistillConfig:
    teacher: str = field(default="smollm2", metadata={"help": "teacher model (its tokenizer is the student's)"})
    student_layers: int = 4
    student_hidden: int = 128
    student_heads: int = 4
    max_steps: int = 200
    batch_size: int = 4
    seq_len: int = 128
    train_windows: int = field(default=0, metadata={"help": "distinct training windows, cycled (0 = max_steps x "
                                                            "batch_size: every window seen once)"})
    learning_rate: float = 1e-3
    temperature: float = 2.0
    alpha: float = field(default=0.5, metadata={"help": "KD weight; 0 = plain cross-entropy (the no-KD baseline)"})
    teacher_topk: int = field(default=64, metadata={"help": "keep the teacher's top-k logits per position (top-k KD); "
                                                            "0: full logits, teacher run every step"})
    teacher_cache: str = field(default="", metadata={"help": ".safetensors file for the teacher's top-k and "
                                                             "features (written once, reused if it matches)"})
    topk_tail: bool = field(default=True, metadata={"help": "top-k KD keeps the teacher's remaining mass as one tail "
                                                            "bucket (exact KL over k+1 outcomes); false: renormalise "
                                                            "over the top-k (biased)"})
    hidden_weight: float = field(default=0.0, metadata={"help": "feature KD: weight of the hidden-state loss"})
    attention_weight: float = field(default=0.0, metadata={"help": "feature KD: weight of the attention-map loss"})
    data_free: bool = field(default=False, metadata={"help": "train the KD student on teacher samples, no real text"})
    seq_kd: bool = field(default=False, metadata={"help": "sequence-level KD: the KD student trains on the teacher's "
                                                          "continuations of the real windows' first seq_kd_prompt "
                                                          "tokens (with alpha=0: cross-entropy on them only)"})
    seq_kd_prompt: int = field(default=32, metadata={"help": "real tokens kept at the start of each seq-KD window"})
    seq_kd_temperature: float = field(default=1.0, metadata={"help": "the teacher's sampling temperature (0: greedy)"})
    sweep_alpha: list[float] = field(default_factory=list, metadata={"help": "alphas to try on the validation split"})
    sweep_temperature: list[float] = field(default_factory=list, metadata={"help": "temperatures to try likewise"})
    seeds: list[int] = field(default_factory=list, metadata={"help": "compare KD with the no-KD student (alpha=0, "
                                                                   "real text) at equal steps, one pair per seed"})
    kd_only: bool = field(default=False, metadata={"help": "with seeds: train only the KD arm (the no-KD students "
                                                           "of the same windows and seeds come from another run)"})
    val_windows: int = field(default=16, metadata={"help": "validation windows (256 tokens) for the sweep"})
    eval_windows: int = 8
    seed: int = 0
    output_dir: str = ""


def _check(cfg: DistillConfig) -> None:
    from llmlab.checkpoint import check_output_dir
    alphas, temps = cfg.sweep_alpha or [cfg.alpha], cfg.sweep_temperature or [cfg.temperature]
    if not all(0 <= a <= 1 for a in alphas):
        raise UserError(f"alpha must be in [0, 1], got {alphas if cfg.sweep_alpha else cfg.alpha}")
    if min(temps) <= 0 or cfg.learning_rate <= 0:
        raise UserError(f"temperature and learning_rate must be > 0, got {temps} and {cfg.learning_rate}")
    for key in ("max_steps", "batch_size", "student_layers", "student_hidden", "student_heads", "val_windows",
                "eval_windows"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.student_hidden % cfg.student_heads:
        raise UserError(f"student_heads={cfg.student_heads} does not divide student_hidden={cfg.student_hidden}")
    if cfg.seq_len < 2 or cfg.teacher_topk < 0:
        raise UserError(f"need seq_len >= 2 and teacher_topk >= 0, got {cfg.seq_len} and {cfg.teacher_topk}")
    check_output_dir(cfg.output_dir)
    if cfg.seeds and max(alphas) == 0 and not cfg.seq_kd:
        raise UserError("seeds=... compares KD (alpha > 0) with alpha = 0: give alpha > 0")
    if cfg.seq_kd and (cfg.data_free or not 1 <= cfg.seq_kd_prompt < cfg.seq_len or cfg.seq_kd_temperature < 0):
        raise UserError("seq_kd needs 1 <= seq_kd_prompt < seq_len, seq_kd_temperature >= 0 and no data_free")
    if cfg.seq_kd and max(alphas) > 0 and not cfg.teacher_topk:
        raise UserError("seq_kd with alpha > 0 uses the cached teacher: give teacher_topk > 0")
    if min(cfg.hidden_weight, cfg.attention_weight) < 0 or cfg.train_windows < 0:
        raise UserError("hidden_weight, attention_weight and train_windows must be >= 0")
    if (cfg.hidden_weight or cfg.attention_weight or cfg.data_free) and not cfg.teacher_topk:
        raise UserError("feature and data-free KD use the cached teacher: give teacher_topk > 0")
    if cfg.teacher_cache and not cfg.teacher_cache.endswith(".safetensors"):
        raise UserError(f"teacher_cache must be a .safetensors file, got {cfg.teacher_cache}")


def texts() -> tuple[list[str], list[str]]:
    """(training documents, validation documents), both from the training split."""
    from llmlab.data.split import is_val
    from llmlab.quant import calibrate
    docs = calibrate.wiki_split(False)
    val = [t for t in docs if is_val(t, VAL_FRACTION, VAL_SEED)]
    return [t for t in docs if not is_val(t, VAL_FRACTION, VAL_SEED)], val


def student_model(cfg: DistillConfig, vocab: int, eos: int | None, seed: int):
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, hidden_size=cfg.student_hidden,
                                   num_hidden_layers=cfg.student_layers, num_attention_heads=cfg.student_heads,
                                   max_position_embeddings=max(256, cfg.seq_len), eos_token_id=eos))


@torch.no_grad()
def teacher_pass(teacher, data: torch.Tensor, batch_size: int, k: int, layers: list[int] = (),
                 attention_layer: int | None = None, temperatures: tuple[float, ...] = ()) -> dict[str, torch.Tensor]:
    """The teacher's top-k logits per predicting position ("top_v", "top_i"), its full
    log-normaliser logsumexp(z / T) for each temperature ("lse{T}", for tail-aware top-k), the outputs of
    the given blocks ("hid{j}", fp16) and one block's head-averaged attention map ("att", fp16)."""
    from tqdm.auto import tqdm

    from llmlab.compress.feature_kd import capture
    parts: dict[str, list] = {}
    stats: dict[str, list] = {}
    hooked = list(layers) + ([attention_layer] if attention_layer is not None else [])
    for b in tqdm(data.split(batch_size), desc="teacher", total=-(-len(data) // batch_size)):
        with capture(teacher, sorted(set(hooked)), attention=attention_layer is not None) as (hid, att):
            logits = teacher(b)[:, :-1].float()
            v, i = logits.topk(k, dim=-1)
        for t in (1.0, 2.0):  # diagnostics: how much of the softened distribution the top-k holds
            mass = ((v / t).logsumexp(-1) - (logits / t).logsumexp(-1)).exp()
            stats.setdefault(f"top-{k} mass at T={t:g}", []).append(mass.mean().item())
        stats.setdefault("top-1 = next token", []).append((i[..., 0] == b[:, 1:]).float().mean().item())
        parts.setdefault("top_v", []).append(v)
        parts.setdefault("top_i", []).append(i.int())
        for t in temperatures:
            parts.setdefault(f"lse{t:g}", []).append((logits / t).logsumexp(-1))
        for j in layers:
            parts.setdefault(f"hid{j}", []).append(hid[j].half())
        if attention_layer is not None:
            parts.setdefault("att", []).append(att[attention_layer].half())
    print("teacher: " + ", ".join(f"{n} {sum(v) / len(v):.3f}" for n, v in stats.items()))
    return {n: torch.cat(p) for n, p in parts.items()}


def cached_teacher(path: str, key: str, need: set[str], data: torch.Tensor, compute) -> dict[str, torch.Tensor]:
    """compute() once; with a path, stored as safetensors (atomic write) with the windows and a key
    naming the teacher and settings, and reused when the key matches, the file holds every tensor
    in `need` (a file with more, e.g. feature targets, serves a logit-only run) and its windows
    equal `data` or extend it (`token_windows` cuts fewer windows as a prefix of more, so a cache
    for 200 windows serves a run on 100)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    if path and os.path.exists(path):
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("key") == key and need <= set(f.keys()):
                stored, n = f.get_tensor("windows"), len(data)
                if len(stored) >= n and torch.equal(stored[:n], data):
                    print(f"teacher targets from {path}" + (f" (first {n} of {len(stored)} windows)"
                                                            if len(stored) > n else ""))
                    return {k: f.get_tensor(k)[:n] for k in need}
        print(f"{path} was made for other windows or settings: recomputing")
    out = compute()
    if path:
        with atomic_path(path) as tmp:
            save_file({**out, "windows": data.contiguous()}, tmp, metadata={"key": key})
        print(f"wrote {path}")
    return out


def train_student(student, data, targets, cfg: DistillConfig, alpha: float, temperature: float, seed: int,
                  teacher=None, features=None) -> None:
    """Cosine-decayed AdamW for max_steps over the windows (cycled, a seeded order per pass). Targets:
    the cached teacher dict (or None with `teacher`: full logits each step); features: a FeatureKD."""
    from llmlab.compress.feature_kd import capture
    from llmlab.compress.kd import distill_loss
    g = torch.Generator().manual_seed(seed)
    passes = -(-cfg.max_steps * cfg.batch_size // len(data))
    order = torch.cat([torch.randperm(len(data), generator=g) for _ in range(passes)])
    params = list(student.parameters()) + (list(features.parameters()) if features is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    student.train()
    n_layers = len(student.model.layers)
    for step in range(cfg.max_steps):
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        for grp in opt.param_groups:
            grp["lr"] = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))
        b = data[idx]
        t_logits = None
        if alpha > 0:
            if targets is not None:
                t_logits = (targets["top_v"][idx], targets["top_i"][idx].long())
                if cfg.topk_tail:
                    t_logits += (targets[f"lse{temperature:g}"][idx],)
            else:
                with torch.no_grad():
                    t_logits = teacher(b)[:, :-1]
        with capture(student, list(range(n_layers)) if features is not None else [],
                     attention=features is not None and cfg.attention_weight > 0) as (hid, att):
            logits = student(b)[:, :-1]
        loss = distill_loss(logits, t_logits, b[:, 1:], temperature, alpha)
        if features is not None:
            t_hid = [targets[f"hid{j}"][idx] for j in features.teacher_layers] if cfg.hidden_weight else None
            loss = loss + features.loss(hid, att, t_hid, targets["att"][idx] if cfg.attention_weight else None,
                                        cfg.hidden_weight, cfg.attention_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)


def _run(cfg, teacher, tok, data, targets, alpha, temperature, seed, windows: dict, kd: bool):
    """Train and score one student; kd: the KD arm (the KD windows, feature losses), else the no-KD baseline."""
    from llmlab.compress.feature_kd import FeatureKD
    from llmlab.quant import calibrate
    student = student_model(cfg, teacher.config.vocab_size, tok.eos_id, seed)
    feats = None
    if kd and alpha > 0 and (cfg.hidden_weight or cfg.attention_weight):
        feats = FeatureKD(cfg.student_layers, teacher.config.num_hidden_layers, cfg.student_hidden,
                          teacher.config.hidden_size)
    train_student(student, data, targets, cfg, alpha, temperature, seed, teacher, feats)
    student.eval()
    row = {"seed": seed, "alpha": alpha, "temperature": temperature, "arm": "kd" if kd else "no-kd"}
    for name, ev in windows.items():
        m = calibrate.perplexity(student, ev, tok=tok)
        row[f"{name}_bits_per_byte"], row[f"{name}_ppl"] = m.bits_per_byte, m.perplexity
    print(f"student ({student.num_params() / 1e6:.1f}M, alpha={alpha}, T={temperature}, seed {seed}"
          f"{', data-free' if cfg.data_free and alpha > 0 else ''}{', seq-KD' if cfg.seq_kd and kd else ''}"
          f"{', features' if feats else ''}): "
          + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.endswith("bits_per_byte")), flush=True)
    return student, row


def _teacher_targets(cfg, teacher, tok, real, layers, att_layer, temps):
    """-> (the cached teacher targets or None, the KD arm's training windows)."""
    key = json.dumps([cfg.teacher, cfg.teacher_topk, cfg.data_free and cfg.seed]
                     + ([cfg.seq_kd_prompt, cfg.seq_kd_temperature, cfg.seed] if cfg.seq_kd else []))
    need = ({"top_v", "top_i"} | {f"lse{t:g}" for t in temps} | {f"hid{j}" for j in layers}
            | ({"att"} if att_layer is not None else set())) if cfg.teacher_topk else set()
    if not (cfg.data_free or cfg.seq_kd):
        return (cached_teacher(cfg.teacher_cache, key, need, real, lambda: teacher_pass(
            teacher, real, cfg.batch_size, cfg.teacher_topk, layers, att_layer, temps)) if need else None), real
    from llmlab.compress.data_free import continue_windows, synthesize

    def make():
        if cfg.data_free:
            special = tuple(getattr(tok, "special", {}).values())
            syn = synthesize(teacher, len(real), cfg.seq_len, seed=cfg.seed, batch_size=16, exclude=special)
        else:  # sequence-level KD: a real prefix, the teacher's continuation
            syn = continue_windows(teacher, real[:, :cfg.seq_kd_prompt], cfg.seq_len, torch.Generator().manual_seed(
                cfg.seed), batch_size=16, temperature=cfg.seq_kd_temperature)
        return {"synthetic": syn, **(teacher_pass(teacher, syn, cfg.batch_size, cfg.teacher_topk, layers, att_layer,
                                                  temps) if need else {})}
    targets = cached_teacher(cfg.teacher_cache, key, need | {"synthetic"}, real, make)
    return (targets if need else None), targets["synthetic"]


def run_distill(cfg: DistillConfig) -> int:
    """knowledge distillation (logit, feature, data-free, sequence-level) from a teacher into a small student

    Example: llmlab distill sweep_alpha=0.1,0.3 sweep_temperature=1,2 seeds=0,1,2 teacher_cache=runs/kd/top64.safetensors
    """
    from llmlab.compress.feature_kd import layer_map
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.quant import calibrate
    _check(cfg)
    torch.set_grad_enabled(True)
    teacher, tok = load_model_and_tokenizer(cfg.teacher, device="cpu", dtype="float32")
    teacher.eval()
    calibrate.check_window(teacher, cfg.seq_len, "seq_len")  # the teacher reads seq_len-token windows
    train_docs, val_docs = texts()
    n_train = cfg.train_windows or cfg.max_steps * cfg.batch_size
    # the same windows for every seed and arm (seeds change init and order only)
    real = calibrate.token_windows(tok, train_docs, n_train, cfg.seq_len, seed=cfg.seed + 100)
    val = calibrate.token_windows(tok, val_docs, cfg.val_windows, 256)
    layers = layer_map(cfg.student_layers, teacher.config.num_hidden_layers) if cfg.hidden_weight else []
    att_layer = teacher.config.num_hidden_layers - 1 if cfg.attention_weight else None
    temps = tuple(sorted(set(cfg.sweep_temperature) | {1.0, 2.0, cfg.temperature})) if cfg.topk_tail else ()
    targets, kd_data = _teacher_targets(cfg, teacher, tok, real, layers, att_layer, temps)
    if targets is not None or max(cfg.sweep_alpha or [cfg.alpha]) == 0:  # the teacher is no longer needed: free it
        from types import SimpleNamespace
        teacher = SimpleNamespace(config=teacher.config)
    ev = calibrate.token_windows(tok, calibrate.wiki_split(True), cfg.eval_windows, 256)
    windows = {"val": val, "heldout": ev}
    alpha, temperature, done = cfg.alpha, cfg.temperature, {}
    if cfg.sweep_alpha or cfg.sweep_temperature:
        # every point is scored on both splits, the choice reads only the validation split; the
        # chosen point's and the baseline's runs are the first seed's pair below (not trained twice)
        grid = [(a, t) for a in (cfg.sweep_alpha or [cfg.alpha]) for t in (cfg.sweep_temperature or [cfg.temperature])]
        for a, t, kd in [(a, t, True) for a, t in grid] + [(0.0, 1.0, False)]:
            done[(cfg.seed, a, t if a else None, kd)] = _run(cfg, teacher, tok, kd_data if kd else real, targets,
                                                              a, t, cfg.seed, windows, kd)
        rows = [r for _, r in done.values()]
        best = min((r for r in rows if r["arm"] == "kd"), key=lambda r: r["val_bits_per_byte"])
        alpha, temperature = best["alpha"], best["temperature"]
        print(f"chosen on the validation split: alpha={alpha}, T={temperature} (no KD: "
              f"{rows[-1]['val_bits_per_byte']:.4f} bits/byte)")
        print(json.dumps({"sweep": [{k: v for k, v in r.items() if not k.startswith("heldout")} for r in rows]}))
    arms = [(alpha, alpha > 0 or cfg.seq_kd)]  # (alpha, the KD arm?)
    if cfg.seeds:
        arms = [(alpha, True)] + ([] if cfg.kd_only else [(0.0, False)])
    results, student = [], None
    for seed, (a, kd) in [(s, arm) for s in (cfg.seeds or [cfg.seed]) for arm in arms]:
        student, row = done.get((seed, a, temperature if a else None, kd)) or _run(
            cfg, teacher, tok, kd_data if kd else real, targets, a, temperature, seed, windows, kd)
        results.append(row)
    if cfg.seeds and cfg.kd_only:
        print(json.dumps({"distill": results}))
    elif cfg.seeds:
        kd = [r["heldout_bits_per_byte"] for r in results if r["arm"] == "kd"]
        base = [r["heldout_bits_per_byte"] for r in results if r["arm"] == "no-kd"]
        wins = sum(k < b for k, b in zip(kd, base))
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"KD {statistics.mean(kd):.4f} ± {sd(kd):.4f} vs no-KD {statistics.mean(base):.4f} ± {sd(base):.4f} "
              f"held-out bits/byte; KD better in {wins} of {len(kd)} seeds")
        print(json.dumps({"distill": results, "kd_wins": wins, "seeds": len(kd)}))
    if cfg.output_dir and student is not None:
        from llmlab.model.hf import save_hf_dir
        save_hf_dir(student, cfg.output_dir, extra_files=tok.hf_files())  # the teacher's tokenizer is the student's
    return 0
