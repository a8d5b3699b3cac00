#!/usr/bin/env bash
# A/B of two checkouts' decode steps in process CPU time (benchmarks/step_cpu.py), taken in turn so
# that a loaded machine's drift falls on both: ROUNDS rounds of (old, new) for the exact path and
# for int8 activations (the order flips every round). Prints every run's JSON line, then the
# medians per checkout and path.
#   bash benchmarks/step_cpu_ab.sh OLD_CHECKOUT NEW_CHECKOUT [ROUNDS=3] [STEPS=8]
# e.g. OLD=$(mktemp -d); git archive main | tar -x -C $OLD; bash benchmarks/step_cpu_ab.sh $OLD $PWD
# Env: PY (interpreter, default .venv/bin/python).
set -eu
old=$1 new=$2 rounds=${3:-3} steps=${4:-8}
PY=${PY:-.venv/bin/python}
script=$(cd "$(dirname "$0")" && pwd)/step_cpu.py
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
    pair="old:$old new:$new"; [ $((r % 2)) = 0 ] && pair="new:$new old:$old"
    for i8 in 0 1; do for arm in $pair; do
        PYTHONPATH=${arm#*:} OMP_NUM_THREADS=1 LLMLAB_INT8_ACTIVATIONS=$i8 "$PY" "$script" --steps "$steps" |
            tail -1 | sed "s/^{/{\"arm\": \"${arm%%:*}\", \"round\": $r, /" | tee -a "$out"
    done; done
done
"$PY" - "$out" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for i8 in ("0", "1"):
    for key in [k for k in rows[0]["ours"] if k.endswith("_cpu_ms")]:
        med = {a: statistics.median(r["ours"][key] for r in rows if r["arm"] == a and r["ours"]["int8"] == i8)
               for a in ("old", "new")}
        print(f"int8={i8} {key}: old {med['old']:.2f} new {med['new']:.2f} ms ({100 * (med['new'] / med['old'] - 1):+.1f} %)")
PYEOF
rm -f "$out"
