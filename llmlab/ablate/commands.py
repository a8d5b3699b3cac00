"""CLI verbs: `llmlab ablate` (the architecture grid) and `llmlab longctx` (RoPE context extension)."""
from __future__ import annotations

from llmlab.ablate.grid import AblateConfig
from llmlab.ablate.longctx import LongCtxConfig
from llmlab.verb import Verb, verb

VERBS: dict[str, Verb] = {}


@verb(VERBS, "longctx", LongCtxConfig)
def run_longctx(cfg: LongCtxConfig) -> int:
    """train at context T, then passkey retrieval + loss by position at 1-8x T for RoPE scalings

    Example: llmlab longctx   (or: llmlab longctx quick=true output_dir=runs/longctx-quick)
    """
    from llmlab.ablate.longctx import run
    from llmlab.device import setup_threads

    setup_threads()
    run(cfg)
    print(f"\nlong-context table: {cfg.output_dir}/table.md; heat maps {cfg.output_dir}/passkey.png; "
          f"loss by position {cfg.output_dir}/ppl.png")
    print(open(f"{cfg.output_dir}/table.md").read())
    return 0


@verb(VERBS, "ablate", AblateConfig)
def run_ablate(cfg: AblateConfig) -> int:
    """train a grid of small models (norms, MLPs, positions, attention, MoE, objectives, encoder-decoder) at equal
    FLOPs, 3 seeds; held-out bits-per-byte (+ span infilling) table + plot

    Example: llmlab ablate quick=true   (or: llmlab ablate groups=mlp,position seeds=0,1,2)
    """
    from llmlab.ablate.grid import run
    from llmlab.device import setup_threads

    setup_threads()
    run(cfg)
    print(f"\nablation table: {cfg.output_dir}/table.md, plots {cfg.output_dir}/ablation.png, infill.png "
          f"(rerun the same command to continue a partial grid)")
    print(open(f"{cfg.output_dir}/table.md").read())
    return 0
