"""The speedrun's SFT stage alone, on a saved speedrun's pretrained base, with overrides (issue 24).

It calls the speedrun's own `_sft` (llmlab/speedrun/pipeline.py) with a SpeedrunConfig whose only
changes are the seed and the key=value overrides given, so with none it trains exactly what
`llmlab speedrun seed=N` trains after pretraining (tests/test_speedrun_arms.py). The chat model is
then scored greedy on the 200 validation arithmetic questions (`templated.validation_items`, the set
settings are chosen on; never the report's held-out set) with the reading / facts split
(`judge.arithmetic_breakdown`) and the score per wording, and the canned replies are recorded.
    python benchmarks/sft_arms.py --base runs/speedrun --out runs/arms/base_s0 --seed 0 [sft_stories=more] \\
        [--lr 1.5e-3] [--results runs/arms/results.jsonl]
--base is a speedrun run directory (train/model and data/val.jsonl are read). Last line: one JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def arm_config(seed: int, overrides: list[str], quick: bool = False):
    """SpeedrunConfig(seed, quick) with `key=value` overrides, typed by the field's default."""
    from llmlab.errors import UserError
    from llmlab.speedrun.pipeline import SpeedrunConfig, _apply_preset_defaults, _check

    cfg = SpeedrunConfig(seed=seed, quick=quick)
    types = {f.name: type(getattr(cfg, f.name)) for f in fields(cfg)}
    for kv in overrides:
        key, sep, value = kv.partition("=")
        if not sep or key not in types or key in ("seed", "quick"):
            raise UserError(f"override '{kv}': expected key=value with a SpeedrunConfig field other than seed/quick")
        t = types[key]
        setattr(cfg, key, value.lower() in ("1", "true", "yes") if t is bool else t(value) if t in (int, float, str)
                else json.loads(value))
    _apply_preset_defaults(cfg)
    _check(cfg)
    return cfg


def run_arm(base: Path, out: Path, cfg, lr: float = 0.0, n_valid: int = 200) -> dict:
    """SFT as the speedrun does on `base`'s pretrained model (into `out`), then the scores."""
    import llmlab.finetune.sft as S
    from llmlab.device import setup_threads
    from llmlab.finetune.instruct import templated
    from llmlab.speedrun import judge as J
    from llmlab.speedrun.pipeline import _chat_samples, _read_texts, _sft

    setup_threads()
    (out / "train").mkdir(parents=True, exist_ok=True)
    link = out / "train" / "model"
    if not link.exists():
        link.symlink_to((base / "train" / "model").resolve(), target_is_directory=True)
    val_texts = _read_texts(base / "data" / "val.jsonl")
    made, speedrun_sft_config = [], S.speedrun_sft_config

    def sft_config(*args, **kw):  # the speedrun's SFT settings, the learning rate replaced if asked
        made.append(speedrun_sft_config(*args, **kw, **({"learning_rate": lr} if lr else {})))
        return made[-1]

    S.speedrun_sft_config = sft_config
    try:
        stages, t = {"sft": {}}, time.perf_counter()
        res, _ = _sft(cfg, out, stages, val_texts)
        sft_s = time.perf_counter() - t
    finally:
        S.speedrun_sft_config = speedrun_sft_config
    canned = _chat_samples(res.model, res.tokenizer, cfg)
    tok = S.chat_tokenizer(res.tokenizer)
    items = templated.validation_items(seed=0, n_arith=n_valid)
    replies = [J.chat_reply(res.model, tok, it["prompt"]) for it in items]
    split = J.arithmetic_breakdown(items, replies, templated.VALID_ARITH_EN)
    sc = made[0]
    return {"seed": cfg.seed, "valid": split["score"], "reading": split["reading"], "facts": split["facts"],
            "canned": canned[0]["reply"], "sft_s": sft_s, "steps": res.step, "train_loss": res.train_loss,
            "sft": {"learning_rate": sc.learning_rate, "max_steps": sc.max_steps, "bf16": sc.bf16,
                    "batch": sc.per_device_train_batch_size, "seed": sc.seed},
            "config": {k: getattr(cfg, k) for k in ("sft_steps", "sft_examples", "sft_stories", "sft_hard_share",
                                                    "sft_average_last", "sft_mix")},
            "by_wording": split["by_wording"], "chats": canned,
            "misses": [{"q": it["prompt"], "a": it["answer"], "reply": r} for it, r in zip(items, replies)
                       if J.score_item(it, r) < 1]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="a speedrun run directory (its train/model is the pretrained base)")
    ap.add_argument("--out", help="where the SFT run goes (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=0, help="the speedrun seed (SFT data draw and order)")
    ap.add_argument("--lr", type=float, default=0.0, help="SFT peak learning rate (0 = the speedrun's)")
    ap.add_argument("--results", help="append the full result (misses, per-wording scores) to this JSONL")
    ap.add_argument("--tag", default="", help="a name for the arm, kept in the result")
    ap.add_argument("--quick", action="store_true", help="a tiny base (speedrun quick=true) and quick SFT")
    ap.add_argument("overrides", nargs="*", help="SpeedrunConfig key=value (sft_stories=more, sft_steps=...)")
    a = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory() if a.quick or not a.out else None
    base = Path(a.base) if a.base else None
    if a.quick and base is None:
        from llmlab.speedrun.pipeline import SpeedrunConfig, run
        run(SpeedrunConfig(quick=True, judge=False, runs_dir=tmp.name, name="base", seed=a.seed))
        base = Path(tmp.name) / "base"
    if base is None:
        ap.error("--base is needed (or --quick)")
    cfg = arm_config(a.seed, a.overrides, quick=a.quick)
    r = {"tag": a.tag, **run_arm(base, Path(a.out or Path(tmp.name) / "arm"), cfg, a.lr, 10 if a.quick else 200),
         "base": str(base), "overrides": a.overrides}
    if a.results:
        with open(a.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    short = {k: r[k] for k in ("tag", "seed", "valid", "reading", "facts", "canned", "sft_s", "overrides")}
    # no peer: the arms are compared across runs (docs/LOG.md, issue 24); "ratio" is left empty
    print(json.dumps({"benchmark": "sft_arms", "ours": short, "peer": {}, "ratio": {}}, ensure_ascii=False))
    return r


if __name__ == "__main__":
    main()
