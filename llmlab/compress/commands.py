"""CLI verbs `llmlab prune` (prune, optionally recover, or sweep sparsities into a PNG) and
`llmlab distill` (train a student from a teacher, or without KD for comparison; llmlab/compress/distill.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError
from llmlab.compress.distill import DistillConfig, run_distill

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
    eval_windows: int = field(default=8, metadata={"help": "held-out windows scored"})
    window_length: int = field(default=256, metadata={"help": "tokens per held-out / calibration window (at most the "
                                                             "model's context: the speedrun model's is 128)"})
    output_dir: str = field(default="", metadata={"help": "HF-style dir for the pruned model (optional)"})
    seed: int = field(default=0, metadata={"help": "calibration draw: the training-split windows are sampled with "
                                                   "seed 1 + seed (the held-out windows never change)"})


def _windows(tok, cfg_n: int, heldout: bool, seed: int, length: int = 256):
    from llmlab.quant import calibrate
    return calibrate.token_windows(tok, calibrate.wiki_split(heldout), cfg_n, length, seed=seed)


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

    from llmlab.checkpoint import check_output_dir
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
    for key in ("eval_windows", "num_calibration_samples"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.recovery_steps < 0 or cfg.learning_rate <= 0:
        raise UserError(f"need recovery_steps >= 0 and learning_rate > 0, got {cfg.recovery_steps} and {cfg.learning_rate}")
    check_output_dir(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    base, tok = load_model_and_tokenizer(cfg.model, device="cpu", dtype="float32")
    base.__dict__.pop("quantized", None)
    calibrate.check_window(base, cfg.window_length, "window_length")
    ev = _windows(tok, cfg.eval_windows, True, 0, cfg.window_length)
    calib = _windows(tok, cfg.num_calibration_samples, False, 1 + cfg.seed, cfg.window_length)
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
        from llmlab.model.hf import save_hf_dir
        save_hf_dir(model, cfg.output_dir, extra_files=tok.hf_files())
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


verb(VERBS, "distill", DistillConfig)(run_distill)
