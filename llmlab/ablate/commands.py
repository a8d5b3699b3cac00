"""CLI verbs: `llmlab ablate` (the architecture grid) and `llmlab longctx` (RoPE context extension)."""
from __future__ import annotations

from llmlab.ablate.grid import AblateConfig
from llmlab.ablate.longctx import LongCtxConfig
from llmlab.verb import Verb


def run_longctx(cfg: LongCtxConfig) -> int:
    from llmlab.ablate.longctx import run
    from llmlab.device import setup_threads

    setup_threads()
    run(cfg)
    print(f"\nlong-context table: {cfg.output_dir}/table.md; heat maps {cfg.output_dir}/passkey.png; "
          f"loss by position {cfg.output_dir}/ppl.png")
    print(open(f"{cfg.output_dir}/table.md").read())
    return 0


def run_ablate(cfg: AblateConfig) -> int:
    from llmlab.ablate.grid import run
    from llmlab.device import setup_threads

    setup_threads()
    run(cfg)
    print(f"\nablation table: {cfg.output_dir}/table.md, plot {cfg.output_dir}/ablation.png "
          f"(rerun the same command to continue a partial grid)")
    print(open(f"{cfg.output_dir}/table.md").read())
    return 0


VERBS = {
    "ablate": Verb(AblateConfig, run_ablate,
                   "train a grid of small models (norms, MLPs, positions, attention, MoE) at equal FLOPs, "
                   "3 seeds; bits-per-byte table + plot",
                   "llmlab ablate quick=true   (or: llmlab ablate groups=mlp,position seeds=0,1,2)"),
    "longctx": Verb(LongCtxConfig, run_longctx,
                    "train at context T, then passkey retrieval + loss by position at 1-8x T for RoPE scalings",
                    "llmlab longctx   (or: llmlab longctx quick=true output_dir=runs/longctx-quick)"),
}
