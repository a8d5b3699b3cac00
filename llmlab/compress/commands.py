"""CLI verbs `llmlab prune` (prune, optionally recover, or sweep sparsities into a PNG) and
`llmlab distill` (train a student from a teacher's logits, or without KD for comparison)."""
from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError

VERBS: dict[str, Verb] = {}

PRUNE_METHODS = ("magnitude", "wanda", "2:4", "owl", "heads", "channels", "layers", "lowrank")


@dataclass
class PruneConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    method: str = field(default="wanda", metadata={"help": "magnitude wanda 2:4 owl heads channels layers lowrank"})
    sparsity: float = field(default=0.5, metadata={"help": "fraction removed (layers: fraction of blocks; "
                                                           "owl: the mean over blocks)"})
    owl_threshold: float = field(default=5.0, metadata={"help": "owl: a score is an outlier above M x the block mean"})
    owl_lambda: float = field(default=0.08, metadata={"help": "owl: per-block sparsities span sparsity +- lambda"})
    rank: int = field(default=0, metadata={"help": "lowrank: keep this many singular values per Linear"})
    energy: float = field(default=0.0, metadata={"help": "lowrank (rank=0): keep this share of sum s_i^2"})
    sweep: list[float] = field(default_factory=list, metadata={"help": "sparsities to evaluate (magnitude and "
                                                                         "wanda, plus 2:4); writes plot="})
    plot: str = field(default="", metadata={"help": "PNG for the sweep"})
    recovery_steps: int = field(default=0, metadata={"help": "fine-tuning steps after pruning (masked)"})
    learning_rate: float = 5e-5
    num_calibration_samples: int = 8
    eval_windows: int = field(default=8, metadata={"help": "held-out 256-token windows scored"})
    output_dir: str = field(default="", metadata={"help": "HF-style dir for the pruned model (optional)"})
    seed: int = 0


def _windows(tok, cfg_n: int, heldout: bool, seed: int):
    from llmlab.quant import calibrate
    return calibrate.token_windows(tok, calibrate.wiki_split(heldout), cfg_n, 256, seed=seed)


def _prune_once(model, method: str, sparsity: float, calib, cfg: "PruneConfig | None" = None):
    from llmlab.compress import prune
    from llmlab.quant import calibrate
    cfg = cfg or PruneConfig()
    if method == "lowrank":
        from llmlab.compress.lowrank import factorize_model
        rep = factorize_model(model, cfg.rank or None, None if cfg.rank else cfg.energy)
        done = [r for r in rep.values() if r["rank"]]
        print(f"lowrank: {len(done)} of {len(rep)} Linears factorised, ranks {min((r['rank'] for r in done), default=0)}"
              f"..{max((r['rank'] for r in done), default=0)}, mean relative error "
              f"{sum(r['rel_error'] for r in rep.values()) / len(rep):.3f}")
        return None
    if method in ("magnitude", "wanda", "2:4", "owl"):
        norms = None
        if method in ("wanda", "2:4", "owl"):
            lins = list(calibrate.quantizable_linears(model))
            st = calibrate.collect(model, calib, lins, {"hessian"})
            norms = {n: st[n].H.diagonal().float().mul(st[n].n / 2).sqrt() for n in lins}  # ||X_j||_2
        if method == "owl":
            masks, per_block = prune.prune_owl(model, sparsity, norms, cfg.owl_threshold, cfg.owl_lambda)
            print("owl block sparsities: " + " ".join(f"{s:.3f}" for s in per_block))
            return masks
        return prune.prune_unstructured(model, sparsity, "wanda" if norms is not None else "magnitude",
                                        "2:4" if method == "2:4" else "unstructured", norms)
    if method == "heads":
        prune.prune_heads(model, sparsity)
    elif method == "channels":
        prune.prune_channels(model, sparsity)
    else:
        prune.prune_layers(model, round(sparsity * model.config.num_hidden_layers), calib[:4])
    return None


def _recover(model, masks, calib, steps: int, lr: float) -> None:
    """Short causal-LM fine-tune on the calibration windows; pruned weights stay zero."""
    import torch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    mods = dict(model.named_modules())
    for step in range(steps):
        b = calib[step % len(calib)][None]
        logits = model(b)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if masks:
            with torch.no_grad():
                for n, m in masks.items():
                    mods[n].weight.mul_(m)
    model.eval()


@verb(VERBS, "prune", PruneConfig)
def run_prune(cfg: PruneConfig) -> int:
    """pruning: magnitude, Wanda, OWL, 2:4, heads/channels/layers, SVD low-rank (+ recovery)

    Example: llmlab prune model=smollm2 method=wanda sparsity=0.5 recovery_steps=20
    """
    import copy

    import torch

    from llmlab.compress import prune
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.quant import calibrate

    if cfg.method not in PRUNE_METHODS:
        raise UserError(f"unknown pruning method '{cfg.method}' (one of: {', '.join(PRUNE_METHODS)})")
    if not 0 <= cfg.sparsity < 1 or any(not 0 <= s < 1 for s in cfg.sweep):
        raise UserError("sparsity must be in [0, 1)")
    if cfg.sweep and not cfg.plot:
        raise UserError("sweep= needs plot=FILE.png")
    if cfg.method == "lowrank" and (cfg.rank < 0 or (cfg.rank == 0 and not 0 < cfg.energy <= 1)):
        raise UserError("method=lowrank needs rank=N (>= 1) or energy=F in (0, 1]")
    if cfg.method == "lowrank" and cfg.output_dir:
        raise UserError("method=lowrank gives factor pairs no HF architecture loads: drop output_dir")
    if cfg.method == "owl":
        from llmlab.compress.prune import owl_sparsities
        owl_sparsities([0.0, 1.0], cfg.sparsity, cfg.owl_lambda)  # checks the range before loading
    torch.manual_seed(cfg.seed)
    base, tok = load_model_and_tokenizer(cfg.model, device="cpu", dtype="float32")
    base.__dict__.pop("quantized", None)
    ev = _windows(tok, cfg.eval_windows, True, 0)
    calib = _windows(tok, cfg.num_calibration_samples, False, 1)
    with torch.no_grad():
        fp = calibrate.perplexity(base, ev).perplexity
    print(f"dense: held-out ppl {fp:.3f}")
    if cfg.sweep:
        curves = {}
        for method in ("magnitude", "wanda"):
            for s in sorted(set(cfg.sweep)):
                m = copy.deepcopy(base)
                with torch.no_grad():
                    _prune_once(m, method, s, calib)
                    curves.setdefault(method, []).append((s, calibrate.perplexity(m, ev).perplexity))
                print(f"{method} {s:.2f}: ppl {curves[method][-1][1]:.3f}", flush=True)
        m = copy.deepcopy(base)
        with torch.no_grad():
            _prune_once(m, "2:4", 0.5, calib)
            nm = calibrate.perplexity(m, ev).perplexity
        print(f"2:4 (wanda scores): ppl {nm:.3f}")
        _plot(curves, nm, fp, cfg.plot, cfg.model)
        print(f"wrote {cfg.plot}")
        return 0
    model = base
    with torch.no_grad():
        masks = _prune_once(model, cfg.method, cfg.sparsity, calib, cfg)
        ppl = calibrate.perplexity(model, ev).perplexity
    setting = (f"rank={cfg.rank}" if cfg.rank else f"energy={cfg.energy}") if cfg.method == "lowrank" else cfg.sparsity
    print(f"{cfg.method} {setting}: ppl {ppl:.3f}; params {model.num_params() / 1e6:.1f}M; "
          f"zeros in block weights {prune.sparsity_of(model):.1%}")
    if cfg.recovery_steps:
        _recover(model, masks, calib, cfg.recovery_steps, cfg.learning_rate)
        with torch.no_grad():
            print(f"after {cfg.recovery_steps} recovery steps: ppl {calibrate.perplexity(model, ev).perplexity:.3f}")
    if cfg.output_dir:
        import tempfile
        from pathlib import Path

        from llmlab.model.hf import save_hf_dir
        with tempfile.TemporaryDirectory() as td:
            tok.save(td)
            files = {n: (Path(td) / n).read_text(encoding="utf-8") for n in ("tokenizer.json",
                                                                                "tokenizer_config.json")}
        save_hf_dir(model, cfg.output_dir, extra_files=files)
        print(f"wrote {cfg.output_dir}")
    return 0


def _plot(curves: dict, nm: float, fp: float, path: str, name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, pts in curves.items():
        ax.plot([100 * s for s, _ in pts], [p for _, p in pts], marker="o", label=method)
    ax.scatter([50], [nm], marker="s", color="k", label="2:4 (wanda)", zorder=3)
    ax.axhline(fp, color="gray", ls="--", lw=1, label="dense")
    ax.set_xlabel("sparsity of block weights (%)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.set_title(f"{name}: perplexity vs sparsity (no recovery)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class DistillConfig:
    teacher: str = field(default="smollm2", metadata={"help": "teacher model (its tokenizer is the student's)"})
    student_layers: int = 4
    student_hidden: int = 128
    student_heads: int = 4
    max_steps: int = 200
    batch_size: int = 4
    seq_len: int = 128
    learning_rate: float = 1e-3
    temperature: float = 2.0
    alpha: float = field(default=0.5, metadata={"help": "KD weight; 0 = plain cross-entropy (the no-KD baseline)"})
    teacher_topk: int = field(default=0, metadata={"help": "> 0: run the teacher once over the training windows "
                                                           "and keep its top-k logits (top-k KD); 0: full logits, "
                                                           "teacher run every step"})
    seeds: list[int] = field(default_factory=list, metadata={"help": "compare KD with the no-KD student (alpha=0) "
                                                                   "at equal steps, one pair per seed"})
    eval_windows: int = 8
    seed: int = 0
    output_dir: str = ""


def _student(cfg: DistillConfig, vocab: int, eos: int | None, seed: int):
    import torch

    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, hidden_size=cfg.student_hidden,
                                   num_hidden_layers=cfg.student_layers, num_attention_heads=cfg.student_heads,
                                   max_position_embeddings=max(256, cfg.seq_len), eos_token_id=eos))


def _teacher_topk(teacher, data, batch_size: int, k: int):
    """The teacher's top-k logits for every training window, computed once: (values, ids)."""
    import torch

    from tqdm.auto import tqdm
    vals, ids = [], []
    with torch.no_grad():
        for b in tqdm(data.split(batch_size), desc="teacher top-k", total=-(-len(data) // batch_size)):
            v, i = teacher(b)[:, :-1].float().topk(k, dim=-1)
            vals.append(v.half())
            ids.append(i)
    return torch.cat(vals), torch.cat(ids)


def _train_student(student, data, teacher_fn, cfg: DistillConfig, alpha: float, seed: int) -> None:
    """Cosine-decayed AdamW over the windows, in a seeded order; teacher_fn(idx) -> teacher logits
    of those windows (full tensor or (values, ids) top-k), not called when alpha = 0."""
    import math

    import torch

    from llmlab.compress.kd import distill_loss
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    student.train()
    for step, idx in enumerate(order.split(cfg.batch_size)):
        for g in opt.param_groups:
            g["lr"] = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))
        b = data[idx]
        t_logits = teacher_fn(idx) if alpha > 0 else None
        loss = distill_loss(student(b)[:, :-1], t_logits, b[:, 1:], cfg.temperature, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step}: loss {float(loss):.4f}", flush=True)


@verb(VERBS, "distill", DistillConfig)
def run_distill(cfg: DistillConfig) -> int:
    """logit knowledge distillation from a teacher into a small student

    Example: llmlab distill teacher=smollm2 max_steps=200 alpha=0.5 temperature=2 teacher_topk=64 seeds=0,1,2
    """
    import json
    import statistics

    import torch

    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.quant import calibrate

    if not 0 <= cfg.alpha <= 1 or cfg.temperature <= 0 or cfg.max_steps < 1 or cfg.teacher_topk < 0:
        raise UserError("need 0 <= alpha <= 1, temperature > 0, max_steps >= 1, teacher_topk >= 0")
    if cfg.seeds and cfg.alpha == 0:
        raise UserError("seeds=... compares KD (alpha > 0) with alpha = 0: give alpha > 0")
    teacher, tok = load_model_and_tokenizer(cfg.teacher, device="cpu", dtype="float32")
    teacher.eval()
    # the same training windows for every seed and arm (seeds change init and order only)
    data = calibrate.token_windows(tok, calibrate.wiki_split(False), cfg.max_steps * cfg.batch_size, cfg.seq_len,
                                   seed=cfg.seed + 100)
    ev = calibrate.token_windows(tok, calibrate.wiki_split(True), cfg.eval_windows, 256)
    if cfg.teacher_topk and cfg.alpha > 0:
        top_v, top_i = _teacher_topk(teacher, data, cfg.batch_size, cfg.teacher_topk)
        teacher_fn = lambda idx: (top_v[idx], top_i[idx])  # noqa: E731
    else:
        def teacher_fn(idx):
            with torch.no_grad():
                return teacher(data[idx])[:, :-1]
    runs = [(s, a) for s in (cfg.seeds or [cfg.seed]) for a in ((cfg.alpha, 0.0) if cfg.seeds else (cfg.alpha,))]
    results = []
    for seed, alpha in runs:
        student = _student(cfg, teacher.config.vocab_size, tok.eos_id, seed)
        _train_student(student, data, teacher_fn, cfg, alpha, seed)
        student.eval()
        with torch.no_grad():
            meter = calibrate.perplexity(student, ev, tok=tok)
        results.append({"seed": seed, "alpha": alpha, "ppl": meter.perplexity, "bits_per_byte": meter.bits_per_byte})
        print(f"student ({student.num_params() / 1e6:.1f}M params, alpha={alpha}, T={cfg.temperature}, "
              f"seed {seed}): held-out ppl {meter.perplexity:.3f}, bits/byte {meter.bits_per_byte:.4f}", flush=True)
    if cfg.seeds:
        kd = [r["bits_per_byte"] for r in results if r["alpha"] > 0]
        base = [r["bits_per_byte"] for r in results if r["alpha"] == 0]
        wins = sum(k < b for k, b in zip(kd, base))
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"KD {statistics.mean(kd):.4f} ± {sd(kd):.4f} vs no-KD {statistics.mean(base):.4f} ± {sd(base):.4f} "
              f"bits/byte; KD better in {wins} of {len(kd)} seeds")
        print(json.dumps({"distill": results, "kd_wins": wins, "seeds": len(kd)}))
    if cfg.output_dir:
        from llmlab.model.hf import save_hf_dir
        save_hf_dir(student, cfg.output_dir)
    return 0
