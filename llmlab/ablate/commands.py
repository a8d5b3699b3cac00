"""CLI verbs: `llmlab ablate` (the architecture grid) and `llmlab longctx` (RoPE context extension)."""
from __future__ import annotations

from llmlab.ablate.grid import AblateConfig
from llmlab.ablate.longctx import LongCtxConfig
from llmlab.verb import Verb, verb

VERBS: dict[str, Verb] = {}


def _run_and_show_table(run, cfg, outputs: str) -> int:
    """Both studies: set threads, run (resumable), say where the outputs are and print the table."""
    from llmlab.device import setup_threads

    setup_threads()
    run(cfg)
    print(f"\n{outputs}")
    print(open(f"{cfg.output_dir}/table.md").read())
    return 0


@verb(VERBS, "longctx", LongCtxConfig)
def run_longctx(cfg: LongCtxConfig) -> int:
    """train at context T, then passkey retrieval + loss by position at 1-8x T for RoPE scalings

    Example: llmlab longctx   (or: llmlab longctx quick=true output_dir=runs/longctx-quick)
    """
    from llmlab.ablate.longctx import run

    return _run_and_show_table(run, cfg, f"long-context table: {cfg.output_dir}/table.md; heat maps "
                               f"{cfg.output_dir}/passkey.png; loss by position {cfg.output_dir}/ppl.png")


@verb(VERBS, "ablate", AblateConfig)
def run_ablate(cfg: AblateConfig) -> int:
    """train a grid of small models (norms, MLPs, positions, attention, MoE, objectives, encoder-decoder) at equal
    FLOPs, 3 seeds; held-out bits-per-byte (+ span infilling) table + plot

    Example: llmlab ablate quick=true   (or: llmlab ablate groups=mlp,position seeds=0,1,2)
    """
    from llmlab.ablate.grid import run

    return _run_and_show_table(run, cfg, f"ablation table: {cfg.output_dir}/table.md, plots {cfg.output_dir}/"
                               "ablation.png, infill.png (rerun the same command to continue a partial grid)")
