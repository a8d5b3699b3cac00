"""Estimate the wall-clock time of the full ablation grid (`llmlab ablate configs/ablate.yaml`) from
measured per-run times, without running it.

Runs the real grid (every row, seed 0, the full model and batch of the config) twice at two small
reference budgets (--short and --long steps), on --workers processes of one thread each (the grid's
groups split between them, as two workers on two cores would run it). Each row's run time is then
fitted as t = a + b * steps (a: model build, held-out evaluation and the final save; b: one
training step), both measured, and the full grid is

    sum over rows and seeds of (a_row + b_row * steps_row(full budget)) / workers

an ESTIMATE: it assumes the per-step time is constant over the run (no thermal or load change) and
the workers stay balanced, and it leaves out the once-per-invocation costs (imports, building the
corpus: seconds to a couple of minutes, nothing next to hours). The peer column is the issue's goal
(3 hours on 2 cores). --quick is a smoke run: on the toy grid a step takes milliseconds, so the fit
is noise and the once-per-invocation costs dominate (the estimate there is far below the measured
time, by design of what it leaves out).

    python benchmarks/ablation_time.py            # ~6 minutes on 2 cores
    python benchmarks/ablation_time.py --quick    # times `llmlab ablate quick=true`, and the estimator on it
    python benchmarks/ablation_time.py --clock cpu --workers 1 --cores 2   # on a shared machine
    python benchmarks/ablation_time.py --measured runs/ablate/results.jsonl  # a grid that ran: no estimate

--clock cpu fits each run's own CPU seconds (time.process_time of its worker) instead of its wall time: on a
machine other people load, the wall time of a one-thread worker counts their share of the core too, its CPU
time does not (it still pays for caches and memory bandwidth they share, so it errs high). A one-thread run's
CPU time is its wall time on a core of its own, so the estimate for --cores workers on --cores free cores is
the summed CPU time / cores.

--measured RESULTS reads a grid that ran (its results.jsonl) instead: the table of the runs there (mean +- std
over seeds, as `llmlab ablate` writes it) and the measured figures, summed cpu_seconds / --cores (default 2)
and summed wall_seconds. A run killed and resumed counts only the CPU time after its resume.

Last line: {"benchmark": "ablation_time", "ours": {...}, "peer": {"hours": 3}, "ratio": {"goal_over_estimate": ..}}
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_grid(config: str, out: str, steps: int, groups: list[list[str]], extra: list[str]) -> float:
    """The grid at max_steps=steps, seed 0, one process per group list; -> wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    # one output dir per worker: rows of different groups share runs (each group's reference), and two
    # workers must not train one run in one dir; a shared run is then timed by both (counted once)
    procs = [subprocess.Popen([sys.executable, "-m", "llmlab.cli", "ablate", config, f"max_steps={steps}", "seeds=0",
                               f"output_dir={out}/w{i}", "groups=" + ",".join(g), "progress=false", *extra],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, g in enumerate(groups)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"ablate failed:\n{err[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "ablate.yaml"))
    ap.add_argument("--short", type=int, default=5, help="reference steps of the first measured budget")
    ap.add_argument("--long", type=int, default=30, help="reference steps of the second")
    ap.add_argument("--workers", type=int, default=2, help="processes to measure with")
    ap.add_argument("--cores", type=int, default=0, help="cores the estimate is for (default: --workers)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="fit each run's wall seconds, or its worker's CPU seconds (a shared machine)")
    ap.add_argument("--out", default="", help="work dir (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="budgets 2 and 8, and time `llmlab ablate quick=true`")
    ap.add_argument("--measured", default="", help="a results.jsonl of a grid that ran: its table and hours")
    args = ap.parse_args()
    if args.measured:
        return measured(Path(args.measured), args.config, args.cores or 2)
    if args.quick:  # the estimator checked on the toy grid: fit at 2 and 4 steps, predict its 8-step run
        args.short, args.long, args.workers = 2, 4, 1
    from llmlab.ablate.rows import ROWS, missing
    from llmlab.train.config import TrainConfig
    cfg = yaml.safe_load(Path(args.config).read_text())
    full_steps, seeds = cfg["max_steps"], len(cfg["seeds"])
    out = args.out or tempfile.mkdtemp(prefix="ablation_time-")
    extra = [f"corpus_dir={cfg.get('corpus_dir', 'runs/ablate/corpus')}"]
    ours: dict = {}
    if args.quick:
        ours["quick_seconds"] = round(_quick(out), 1)
        full_steps, seeds = 8, 1  # AblateConfig(quick=True)'s budget, and its sizes below
        extra = [f"corpus_dir={out}/quick-corpus-quick", "max_docs=300", "vocab_size=512", "hidden_size=32",
                 "num_hidden_layers=2", "context=32", "batch_size=4"]
    groups = list(dict.fromkeys(r.group for r in ROWS.values() if not missing(r, TrainConfig)))
    split = [groups[i::args.workers] for i in range(args.workers)]
    walls = {s: run_grid(args.config, out, s, split, extra) for s in (args.short, args.long)}
    from llmlab.ablate.grid import read_results
    clock = f"{args.clock}_seconds"
    res = [r for i in range(args.workers) for r in read_results(Path(out) / f"w{i}" / "results.jsonl")
           if clock in r]
    ref_fpt = next(r["flops_per_token"] for r in res if r["key"] == "reference")
    keys = list(dict.fromkeys(r["key"] for r in res))
    total, rows = 0.0, {}
    for key in keys:
        runs = sorted((r for r in res if r["key"] == key), key=lambda r: r["steps"])
        if len(runs) < 2 or runs[0]["steps"] == runs[-1]["steps"]:
            continue
        lo, hi = runs[0], runs[-1]
        b = max(0.0, (hi[clock] - lo[clock]) / (hi["steps"] - lo["steps"]))  # noise can invert it
        a = max(0.0, lo[clock] - b * lo["steps"])
        steps_full = max(1, round(full_steps * ref_fpt / lo["flops_per_token"]))  # equal FLOPs (grid.steps_for)
        rows[lo["row"]] = {"a_s": round(a, 1), "step_s": round(b, 3), "steps_full": steps_full,
                           "run_s": round(a + b * steps_full)}
        total += seeds * (a + b * steps_full)
    cores = args.cores or args.workers
    hours = total / cores / 3600
    for name, r in rows.items():
        print(f"{name:34s} fixed {r['a_s']:6.1f} s  step {r['step_s']:.3f} s  x {r['steps_full']} steps = {r['run_s']} s/run")
    ours.update(estimated_hours=round(hours, 2), rows=len(rows), seeds=seeds, workers=args.workers, cores=cores,
                clock=args.clock,
                measured_wall_s={str(k): round(v) for k, v in walls.items()}, per_row=rows)
    print(f"full grid ({len(rows)} runs x {seeds} seeds, {full_steps} reference steps) on {cores} cores "
          f"({args.clock} clock): "
          f"~{hours:.2f} h (estimate)")
    if args.quick:  # the estimate of the toy grid beside its measured run
        est, meas = total / cores, ours["quick_seconds"]
        print(f"toy grid: estimated {est:.1f} s, measured {meas:.1f} s (incl. building its corpus)")
        print(json.dumps({"benchmark": "ablation_time_quick", "ours": ours, "peer": {"quick_seconds": meas},
                          "ratio": {"estimator_accuracy": min(est / meas, meas / est) if est and meas else 0.0}}))
        return
    print(json.dumps({"benchmark": "ablation_time", "ours": ours, "peer": {"hours": 3.0},
                      "ratio": {"goal_over_estimate": 3.0 / hours if hours else 0.0}}))


def measured(path: Path, config: str, cores: int) -> None:
    """The figures of a grid that ran: its table and summed CPU time / cores (no fit, no estimate)."""
    from llmlab.ablate.grid import AblateConfig, read_results, summarize, table
    from llmlab.ablate.rows import missing, select
    from llmlab.train.config import TrainConfig
    cfg = AblateConfig(**{k: v for k, v in yaml.safe_load(Path(config).read_text()).items()}, progress=False)
    res = [r for r in read_results(path) if r["signature"] == cfg.signature() and r["seed"] in cfg.seeds]
    rows = select([], [])
    print(table(summarize(cfg, rows, res, {r.name: m for r in rows if (m := missing(r, TrainConfig))})), end="")
    cpu, wall = sum(r.get("cpu_seconds", 0.0) for r in res), sum(r.get("wall_seconds", 0.0) for r in res)
    hours = cpu / cores / 3600
    want = len({r.key for r in rows if not missing(r, TrainConfig)}) * len(cfg.seeds)
    print(f"{len(res)} of {want} runs: {cpu:.0f} CPU s = {hours:.2f} h on {cores} cores; wall seconds summed "
          f"{wall:.0f} ({wall / cores / 3600:.2f} h on {cores} workers)")
    ours = {"runs": len(res), "runs_in_grid": want, "cpu_seconds": round(cpu, 1), "measured_hours": round(hours, 3),
            "cores": cores, "wall_seconds_summed": round(wall, 1)}
    print(json.dumps({"benchmark": "ablation_time_measured", "ours": ours, "peer": {"hours": 3.0},
                      "ratio": {"goal_over_measured": 3.0 / hours if hours else 0.0}}))


def _quick(out: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llmlab.cli", "ablate", "quick=true", f"output_dir={out}/quick",
                    f"corpus_dir={out}/quick-corpus", "progress=false"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
