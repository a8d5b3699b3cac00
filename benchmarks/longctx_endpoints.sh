#!/bin/bash
# The session-11 long-context study (docs/LOG.md "Session 11, issue 18", docs/model.md "Long context"):
# session 9's passkey base with a share SHARE of the passkey rows at exactly depth 0 or 1 (llmlab/ablate/mix.py
# endpoint_share; stops after 2 probes in a row at 100 % validation keys, best-on-validation checkpoint), then
# `llmlab longctx` with 300 fine-tune steps at 4T and the same share: (a) YaRN and PI on the test keys (25 a
# length), (b) the same models on 100 test keys a length at 1T and 4T (the goal figure: YaRN, 4T), (c) YaRN on
# validation keys, (d) none / NTK / dynamic on the test keys. ~25 min on one quiet core (AVX2 EPYC).
#   bash benchmarks/longctx_endpoints.sh [OUT]       # default OUT=runs/s11; BASE=DIR reuses a trained base
set -euo pipefail
OUT=${1:-runs/s11}
SHARE=${SHARE:-0.4}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PYTHON:-python}
LL="$PY -m llmlab.cli longctx"
BASE=$(realpath -m "${BASE:-$OUT/pk}")
[ -f "$BASE/base/selected.json" ] || $PY benchmarks/passkey_recipe.py --out "$BASE" --heads 2 --layers 2 \
  --passkey-fraction 0.5 --copy-fraction 0.5 --steps 16000 --every 1000 --keep-every 1000 --select best \
  --endpoint-share "$SHARE" --stop-full 2
COMMON="context=128 hidden_size=64 num_hidden_layers=2 num_attention_heads=2 passkey_fraction=0.5 copy_fraction=0.5
 copy_period=random passkey_loss=answer ft_steps=300 endpoint_share=$SHARE"
for d in lc lc_100 lc_val; do mkdir -p "$OUT/$d"; ln -sfn "$BASE/base" "$OUT/$d/base"; done
for m in yarn linear; do  # (b) and (c) evaluate the models (a) fine-tuned
  mkdir -p "$OUT/lc/ft-$m"; ln -sfn "../lc/ft-$m" "$OUT/lc_100/ft-$m"
done
ln -sfn ../lc/ft-yarn "$OUT/lc_val/ft-yarn"
$LL $COMMON output_dir="$OUT/lc" 'methods=[yarn,linear]'
$LL $COMMON output_dir="$OUT/lc_100" 'methods=[yarn,linear]' per_cell=20 'multiples=[1,4]'
$LL $COMMON output_dir="$OUT/lc_val" 'methods=[yarn]' key_seed=2000
$LL $COMMON output_dir="$OUT/lc" 'methods=[none,linear,ntk,dynamic,yarn]'
for d in lc lc_100 lc_val; do echo "== $d"; cat "$OUT/$d/table.md"; done
