"""The speedrun's fluency judgement again, on a saved run's pretrained model (issue 24).

Runs `judge.choose_decoding` over the current `judge.DECODING_GRID` on the run's validation prompts,
then applies the same rule (`judge.pick_decoding`) to the rows of an older grid (`--old-grid`, the
current grid less the given temperatures) and reads the 20 fixed prompts once per distinct choice,
plus the fixed T 0.8 setting. So one pass says what a grid change does to the report's figure.
    python benchmarks/judge_fluency.py --run runs/speedrun [--drop-temperature 0.5] [--out f.json]
--run is a speedrun run directory (train/model and data/val.jsonl are read, nothing is written there).
Last line: one JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(run: Path, drop: list[float]) -> dict:
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.speedrun import judge as J
    from llmlab.speedrun.pipeline import _read_texts

    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(str(run / "train" / "model"), device="cpu", dtype="float32")
    val_texts = _read_texts(run / "data" / "val.jsonl")
    ctx = J.load_judge()
    n, k = len(J.FLUENCY_PROMPTS), J.SAMPLE_TOKENS
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
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--drop-temperature", type=float, nargs="*", default=[0.5],
                    help="temperatures the old grid lacked (default: 0.5, added in session 10)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    res = score(args.run, args.drop_temperature)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps({k: v for k, v in res.items() if k != "selection"}, ensure_ascii=False))
    return res


if __name__ == "__main__":
    main()
