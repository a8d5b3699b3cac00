"""The speedrun's fluency judgement again, on a saved run's pretrained model (issue 24).

Runs `judge.choose_decoding` over the current `judge.DECODING_GRID` on the run's validation prompts,
then applies the same rule (`judge.pick_decoding`) to the rows of an older grid (`--old-grid`, the
current grid less the given temperatures) and reads the 20 fixed prompts once per distinct choice,
plus the fixed T 0.8 setting. So one pass says what a grid change does to the report's figure.
    python benchmarks/judge_fluency.py --run runs/speedrun [--drop-temperature 0.5] [--out f.json]
--run is a speedrun run directory (train/model and data/val.jsonl are read, nothing is written there).
    python benchmarks/judge_fluency.py --quick   # a tiny base (speedrun quick=true), 5 prompts of 16 tokens
Last line: one JSON object; no peer (the grids are compared inside "ours"), so "peer" and "ratio" are empty.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(run: Path, drop: list[float], quick: bool = False) -> dict:
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.speedrun import judge as J
    from llmlab.speedrun.pipeline import _read_texts

    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(str(run / "train" / "model"), device="cpu", dtype="float32")
    val_texts = _read_texts(run / "data" / "val.jsonl")
    ctx = J.load_judge()
    n, k = (5, 16) if quick else (len(J.FLUENCY_PROMPTS), J.SAMPLE_TOKENS)  # quick: as `judge.fluency`
    chosen, rows = J.choose_decoding(model, tok, J.validation_prompts(val_texts, n), ctx, k)
    old_rows = [r for r in rows if r["decoding"].get("temperature") not in drop]
    choices = {"new_grid": chosen, "old_grid": J.pick_decoding(old_rows), "fixed": J.DECODING_GRID[0]}
    fixed = {}
    for name, d in choices.items():
        key = json.dumps(d, sort_keys=True)
        if key not in fixed:
            samples = J.sample_continuations(model, tok, J.FLUENCY_PROMPTS[:n], k, d)
            fixed[key] = {"judge_ppl": J.judge_perplexity(ctx, [(s["prompt"], s["completion"]) for s in samples]),
                          "distinct_2": J.distinct_n([s["completion"] for s in samples]),
                          "first_samples": [s["prompt"] + s["completion"] for s in samples[:3]]}
    out = {"run": str(run), "selection": rows, "seconds": 0.0}
    for name, d in choices.items():
        out[name] = {"decoding": d, **fixed[json.dumps(d, sort_keys=True)]}
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a speedrun run dir (required unless --quick)")
    ap.add_argument("--quick", action="store_true", help="score a tiny speedrun quick=true base, 5 prompts x 16 tokens")
    ap.add_argument("--drop-temperature", type=float, nargs="*", default=[0.5],
                    help="temperatures the old grid lacked (default: 0.5, added in session 10)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.run is None and not args.quick:
        ap.error("--run is needed (or --quick)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is None:
            from llmlab.speedrun.pipeline import SpeedrunConfig, run
            run(SpeedrunConfig(quick=True, judge=False, runs_dir=tmp, name="base"))
            args.run = Path(tmp) / "base"
        res = score(args.run, args.drop_temperature, args.quick)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")
    ours = {k: v for k, v in res.items() if k != "selection"}
    print(json.dumps({"benchmark": "judge_fluency", "ours": ours, "peer": {}, "ratio": {}}, ensure_ascii=False))
    return res


if __name__ == "__main__":
    main()
