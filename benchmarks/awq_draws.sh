#!/usr/bin/env bash
# A pre-registered AWQ comparison over calibration draws (issue 20, session 14; docs/LOG.md):
#   bash benchmarks/awq_draws.sh ARM "V0 V1 V2 V3 V4" LAST_START OUT
# 1. the validation row of benchmarks/quant_methods.py's row ARM for draws 0-4, one process each
#    (saved to / loaded from $ROWS), none started at or after UTC HHMM LAST_START;
# 2. the rule: ARM is chosen iff its mean validation perplexity over the draws it finished (at least
#    3) is lower than the incumbent's figures V0..V4 on the same draws by at least $MARGIN (0.10);
# 3. if chosen: its finished draws scored on the evaluation windows beside rtn4, in one process
#    (the JSON's awq-style ratio of the row is RTN's delta / the mean of the draws' deltas).
# Environment: PY (python), ROWS (runs/rows), MARGIN (0.10). Run from the repository root.
set -u
ARM=$1; INC=$2; LAST=$3; OUT=$4
PY=${PY:-python}; ROWS=${ROWS:-runs/rows}; MARGIN=${MARGIN:-0.10}
F="--eval-windows 16 --calib-windows 32 --no-peers --load-dir $ROWS"
mkdir -p "$OUT"
for D in 0 1 2 3 4; do
  if [ "$(date -u +%H%M)" -ge "$LAST" ]; then echo "skipped $ARM d$D (time)" >> "$OUT/driver.txt"; continue; fi
  echo "start $ARM d$D $(date -u +%T)" >> "$OUT/driver.txt"
  $PY benchmarks/quant_methods.py --score val $F --save-dir "$ROWS" --rows "$ARM" --calib-draw $D > "$OUT/val_${ARM}_d$D.log" 2>&1
  echo "end $ARM d$D rc=$? $(date -u +%T)" >> "$OUT/driver.txt"
done
$PY - "$ARM" "$INC" "$OUT" "$MARGIN" > "$OUT/choice.json" <<'PYEOF'
import json, sys
from pathlib import Path
arm, inc, out, margin = sys.argv[1], [float(v) for v in sys.argv[2].split()], Path(sys.argv[3]), float(sys.argv[4])
got = {}
for d in range(len(inc)):
    p = out / f"val_{arm}_d{d}.log"
    lines = p.read_text().splitlines() if p.exists() else []
    if lines and lines[-1].startswith("{"):
        got[d] = json.loads(lines[-1])["ours"][arm]
draws = sorted(got)
res = {"arm": arm, "draws": draws, "arm_val": [got[d] for d in draws], "incumbent_val": [inc[d] for d in draws]}
if len(draws) >= 3:
    res["arm_mean"] = sum(got.values()) / len(draws)
    res["incumbent_mean"] = sum(inc[d] for d in draws) / len(draws)
    res["chosen"] = arm if res["incumbent_mean"] - res["arm_mean"] >= margin else "incumbent"
else:
    res["chosen"] = "incumbent (fewer than 3 draws: no choice)"
print(json.dumps(res))
PYEOF
C=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen'])" "$OUT/choice.json")
echo "chosen $C $(date -u +%T)" >> "$OUT/driver.txt"
if [ "$C" = "$ARM" ]; then
  DR=$($PY -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['draws'])))" "$OUT/choice.json")
  $PY benchmarks/quant_methods.py $F --rows "rtn4,$ARM" --calib-draws "$DR" > "$OUT/eval_${ARM}.log" 2>&1
  echo "eval $ARM draws $DR rc=$? $(date -u +%T)" >> "$OUT/driver.txt"
fi
echo done >> "$OUT/driver.txt"
