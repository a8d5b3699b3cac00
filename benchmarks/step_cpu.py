"""Process CPU time of SmolLM2 decode steps, for A/B runs of two checkouts on a loaded machine.

Wall time on a shared machine mostly measures the wait for a core; process CPU time does not, so
two checkouts' figures taken in turn (old, new, old, new) compare even under load (docs/infer.md,
session 10). One thread. Prints one JSON line: median CPU ms of a batch-1 step (64-token prompt,
the exact path unless LLMLAB_INT8_ACTIVATIONS=1) and of a 32-row paged step (contexts 16..160, as
`inference.py --profile`), each over `--steps` steps after warm-up steps.

    PYTHONPATH=<checkout> OMP_NUM_THREADS=1 python benchmarks/step_cpu.py [--steps 16] [--rows 32] [--quick]

No peer inside one run (the A/B is two checkouts taken in turn), so "peer" and "ratio" are empty.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cpu_ms(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return 1e3 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="3 steps of each kind, 8 rows")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rows = 3, 8
    torch.set_num_threads(1)
    import _inference_profile as prof
    from llmlab.infer.runner import ContiguousDecoder
    from llmlab.model.gguf_io import load_gguf
    from llmlab.model.load import packaged_path

    model = load_gguf(packaged_path("smollm2"))
    g = torch.Generator().manual_seed(0)
    out = {"checkout": os.environ.get("PYTHONPATH", ""),
           "int8": os.environ.get("LLMLAB_INT8_ACTIVATIONS", "0"), "load_before": round(os.getloadavg()[0], 2)}
    with torch.inference_mode():
        dec = ContiguousDecoder(model, 64 + 3 * args.steps + 16)
        logits = dec.forward(torch.randint(100, 40000, (64,), generator=g).tolist())
        for _ in range(4):
            logits = dec.forward([int(logits.argmax())])
        out["batch1_cpu_ms"] = cpu_ms(lambda: dec.forward([int(logits.argmax())]), args.steps)
        cache, runner, tables = prof._paged_batch(model, args.rows, args.steps + 4, g)
        ids = [1] * args.rows
        for _ in range(2):
            runner.decode(tables, ids)
        out[f"batch{args.rows}_cpu_ms"] = cpu_ms(lambda: runner.decode(tables, ids), args.steps)
    out["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps({"benchmark": "step_cpu", "ours": out, "peer": {}, "ratio": {}}))


if __name__ == "__main__":
    main()
