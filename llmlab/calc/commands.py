"""CLI verb `llmlab calc`: every training/inference formula for one model and parallel layout.

  llmlab calc depth=4 seq_len=256 micro_batch=8 world_size=2
  llmlab calc hidden_size=4096 num_hidden_layers=32 num_attention_heads=32 vocab_size=32000 \
      seq_len=2048 micro_batch=1 tp=8 pp=4 micro_batches=16 compute=1e23
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError

VERBS: dict[str, Verb] = {}


@dataclass
class CalcConfig:
    depth: int = field(default=0, metadata={"help": "llmlab sizing dial (width 64*depth); 0 = use hidden_size etc."})
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 0
    vocab_size: int = 32000
    seq_len: int = 256
    micro_batch: int = field(default=8, metadata={"help": "sequences per rank per micro-batch"})
    world_size: int = field(default=1, metadata={"help": "data-parallel ranks"})
    tp: int = field(default=1, metadata={"help": "tensor-parallel size"})
    pp: int = field(default=1, metadata={"help": "pipeline stages"})
    micro_batches: int = field(default=8, metadata={"help": "micro-batches per pipeline step"})
    precision: str = field(default="mixed", metadata={"help": "mixed (16-bit weights, fp32 Adam) or fp32"})
    fp32_grads: bool = field(default=False, metadata={"help": "mixed: fp32 master gradients (20 B/param)"})
    tokens: float = field(default=0.0, metadata={"help": "training tokens D (0: 20 x params)"})
    compute: float = field(default=0.0, metadata={"help": "FLOP budget for the Chinchilla plan (0: 6ND)"})
    context: int = field(default=0, metadata={"help": "decode context length (0: seq_len)"})
    lora_r: int = field(default=8, metadata={"help": "fine-tuning rows: LoRA rank on q_proj and v_proj"})


def _model_config(cfg: CalcConfig):
    from llmlab.model.config import ModelConfig
    if cfg.depth:
        from llmlab.train.sizing import size_model
        return size_model(cfg.depth, cfg.vocab_size, cfg.seq_len).model
    try:
        return ModelConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                           num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                           num_key_value_heads=cfg.num_key_value_heads or None, max_position_embeddings=cfg.seq_len)
    except ValueError as e:
        raise UserError(str(e)) from None


def report(cfg: CalcConfig) -> list[tuple[str, str]]:
    from llmlab.calc import activations, chinchilla, comm, flops, memory, pipeline
    from llmlab.model.transformer import num_params
    for name in ("seq_len", "micro_batch", "world_size", "tp", "pp", "micro_batches"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    m = _model_config(cfg)
    if m.num_attention_heads % cfg.tp or m.num_key_value_heads % cfg.tp:
        raise UserError(f"tp={cfg.tp} does not divide the {m.num_attention_heads} attention heads "
                        f"({m.num_key_value_heads} KV heads)")
    if m.num_hidden_layers % cfg.pp:
        raise UserError(f"pp={cfg.pp} does not divide the {m.num_hidden_layers} layers")
    n = num_params(m)
    d = cfg.tokens or 20.0 * n
    sb = memory.bytes_per_param(cfg.precision, cfg.fp32_grads)
    s, b, h, L = cfg.seq_len, cfg.micro_batch, m.hidden_size, m.num_hidden_layers
    gib = lambda x: f"{x / 2**30:.3f} GiB"  # noqa: E731
    rows = [("params N", f"{n:,}"), ("training FLOPs 6ND", f"{flops.training_flops(n, d):.3e} (D = {d:.3e})"),
            ("layer fwd FLOPs 24bsh^2+4bs^2h", f"{flops.layer_forward_flops(b, s, h):.3e}"),
            ("step FLOPs per rank (3 x fwd)", f"{3 * flops.model_forward_flops(m, b, s):.3e}"),
            ("decode FLOPs/token", f"{flops.decode_flops_per_token(m, cfg.context or s):.3e}"),
            ("KV cache (16-bit, batch 1)", gib(flops.kv_cache_bytes(m, 1, cfg.context or s))),
            ("bytes/param (w+g+Adam)", f"{sb.weight:g}+{sb.grad:g}+{sb.optim:g} = {sb.total:g}")]
    for stage, name in enumerate(("DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3")):
        rows.append((f"model states/rank {name}", gib(memory.per_rank_state_bytes(n / cfg.tp / cfg.pp,
                                                                                     cfg.world_size, stage, sb))))
    lpr = L // cfg.pp
    for rc in ("none", "selective", "full"):
        for sp in (False, True):
            if cfg.tp == 1 and sp:
                continue
            a = activations.layer_activation_bytes(s, b, h, m.num_attention_heads, cfg.tp, sp, rc) * lpr
            rows.append((f"activations/rank recompute={rc}{' +SP' if sp else ''}", gib(a)))
    rows += _finetune_rows(cfg, m, n, gib)
    rows += [("comm/step DDP, ZeRO-1/2", gib(comm.step_volume(n, cfg.world_size, 0, 2))),
             ("comm/step ZeRO-3", gib(comm.step_volume(n, cfg.world_size, 3, 2))),
             ("pipeline bubble (p-1)/(m+p-1)", f"{pipeline.bubble_fraction(cfg.pp, cfg.micro_batches):.3f}")]
    c = cfg.compute or flops.training_flops(n, d)
    p = chinchilla.plan(c)
    a_exp, b_exp = chinchilla.exponents()
    rows.append((f"Chinchilla C={c:.2e}", f"N_opt {p['params']:.3e}, D_opt {p['tokens']:.3e} "
                 f"({p['tokens_per_param']:.1f} tok/param), loss {p['loss']:.3f}; N~C^{a_exp:.3f}, D~C^{b_exp:.3f}"))
    return rows


def _finetune_rows(cfg: CalcConfig, m, n: int, gib) -> list[tuple[str, str]]:
    """digest-004 sec. 1: fine-tuning memory (weights + grads + optimizer, no activations)."""
    from llmlab.calc.memory import finetune_memory
    kv = m.num_key_value_heads * (m.hidden_size // m.num_attention_heads)
    n_lora = m.num_hidden_layers * cfg.lora_r * ((m.hidden_size + m.hidden_size) + (m.hidden_size + kv))
    rows = []
    for label, kw in (("full fp32 Adam", dict(precision="fp32")), ("full 16-bit Adam", dict(precision="bf16")),
                      ("full mixed Adam", dict(precision="mixed")),
                      ("full mixed, optimizer offloaded", dict(precision="mixed", offload="optimizer")),
                      ("full mixed, all offloaded", dict(precision="mixed", offload="all")),
                      (f"LoRA r={cfg.lora_r} q,v fp32 ({n_lora:,} trainable)",
                       dict(precision="fp32", method="lora", trainable=n_lora))):
        r = finetune_memory(n, **kw)
        rows.append((f"fine-tune {label}", f"device {gib(r['device'])}, host {gib(r['host'])}"))
    return rows


@verb(VERBS, "calc", CalcConfig)
def run_calc(cfg: CalcConfig) -> int:
    """FLOPs, memory per rank (DDP/ZeRO), activations, comm, bubble, Chinchilla

    Example: llmlab calc depth=4 seq_len=256 micro_batch=8 world_size=2 tp=2 pp=2
    """
    rows = report(cfg)
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


@dataclass
class FitConfig:
    data: str = field(default="", metadata={"help": "a UTF-8 .txt file, trained byte-level (last 10% held out)"})
    output_dir: str = "runs/calc_fit"
    hidden_sizes: list[int] = field(default_factory=lambda: [16, 24, 32, 48, 64], metadata={"help": "model sizes"})
    steps: list[int] = field(default_factory=lambda: [32, 64, 128], metadata={"help": "token budgets, in steps"})
    layers: int = 2
    seq_len: int = 64
    batch: int = 8
    learning_rate: float = 3e-3
    seed: int = 0


def plot_fit(points: list[dict], fit: dict, path) -> None:
    """Left: the runs and the fitted L(N, D) per budget; right: N_opt(C) beside Chinchilla's slope."""
    from llmlab.calc.fit import optimal_split, predict
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for d in sorted({q["tokens"] for q in points}):
        pts = [q for q in points if q["tokens"] == d]
        ax1.plot([q["params"] for q in pts], [q["val_loss"] for q in pts], "o", label=f"D={pts[0]['tokens']:,}")
        ns = sorted(q["params"] for q in pts)
        ax1.plot(ns, [predict(fit, n, pts[0]["tokens"]) for n in ns], "-", color=ax1.lines[-1].get_color())
    ax1.set(xscale="log", xlabel="params N", ylabel="val loss (nats/byte)", title="runs (dots) and fitted L(N, D)")
    ax1.legend()
    cs = [6 * q["params"] * q["tokens"] for q in points]
    grid = [min(cs) * (max(cs) / min(cs)) ** (i / 20) for i in range(21)]
    n_fit = [optimal_split(fit, c)[0] for c in grid]
    ax2.plot(grid, n_fit, label=f"fit: N_opt ~ C^{fit['a']:.2f}")
    ax2.plot(grid, [n_fit[0] * (c / grid[0]) ** 0.452 for c in grid], "--", label="Chinchilla's slope C^0.45")
    ax2.set(xscale="log", yscale="log", xlabel="compute C = 6ND", ylabel="N_opt", title="IsoFLOP optimum")
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


@verb(VERBS, "calc fit", FitConfig)
def run_fit(cfg: FitConfig) -> int:
    """scaling-law study: tiny runs of >= 5 sizes x >= 3 budgets, fit L(N, D)

    Example: llmlab calc fit data=corpus.txt output_dir=runs/calc_fit
    """
    import json
    from pathlib import Path

    import torch

    from llmlab.calc.fit import fit_loss_surface, train_point
    from llmlab.device import setup_threads
    p = Path(cfg.data)
    if not cfg.data or not p.is_file():
        raise UserError(f"data must be a .txt file, got {cfg.data!r}")
    if len(cfg.hidden_sizes) < 2 or len(cfg.steps) < 2:
        raise UserError("a fit needs at least 2 hidden_sizes and 2 steps values (the study: >= 5 x >= 3)")
    setup_threads()
    raw = torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)
    n_val = len(raw) // 10
    if n_val < 4 * (cfg.seq_len + 1):
        raise UserError(f"{p}: too little text ({len(raw)} bytes) for seq_len {cfg.seq_len}")
    train, val = raw[:-n_val], raw[-n_val:]
    points = []
    for h in cfg.hidden_sizes:
        for s in cfg.steps:
            pt = train_point(train, val, h, cfg.layers, s, cfg.seq_len, cfg.batch, cfg.learning_rate, cfg.seed)
            points.append(pt)
            print(f"hidden {h:4d}  N {pt['params']:>9,}  D {pt['tokens']:>9,}  val loss {pt['val_loss']:.4f}", flush=True)
    fit = fit_loss_surface(points)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps({"points": points, "fit": fit}, indent=1))
    print(f"L(N, D) = {fit['E']:.3f} + {fit['A']:.3g}/N^{fit['alpha']:.3f} + {fit['B']:.3g}/D^{fit['beta']:.3f}; "
          f"N_opt ~ C^{fit['a']:.3f}, D_opt ~ C^{fit['b']:.3f} (Chinchilla: 0.452, 0.548)")
    plot_fit(points, fit, out / "scaling.png")
    print(f"wrote {out / 'fit.json'} and {out / 'scaling.png'}")
    return 0
