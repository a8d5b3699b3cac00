#!/bin/bash
# The session-9 long-context study end to end (docs/model.md "Long context", docs/LOG.md session 9):
# the passkey base (24k steps, rate decayed from 16k, best-on-validation checkpoint), then `llmlab longctx`
# with 300 fine-tune steps at 4T for every method on the test keys, and the YaRN 2 x 2 (temperature off,
# ramp narrowed) on validation (key_seed=2000) and test keys. ~35 min on one quiet core (AVX2 EPYC).
#   bash benchmarks/longctx_study.sh [OUT]          # default OUT=runs/s9
set -euo pipefail
OUT=${1:-runs/s9}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PYTHON:-python}
LL="$PY -m llmlab.cli longctx"
[ -f "$OUT/pk24/base/selected.json" ] || $PY benchmarks/passkey_recipe.py --out "$OUT/pk24" --heads 2 --layers 2 \
  --passkey-fraction 0.5 --copy-fraction 0.5 --steps 24000 --every 1000 --decay-from 16000 --min-lr 0.1 \
  --keep-every 1000 --select best
COMMON="context=128 hidden_size=64 num_hidden_layers=2 num_attention_heads=2 passkey_fraction=0.5 copy_fraction=0.5
 copy_period=random passkey_loss=answer ft_steps=300"
for d in lc lc_cold lc_narrow lc_val lc_cold_val lc_narrow_val; do
  mkdir -p "$OUT/$d"; ln -sfn ../pk24/base "$OUT/$d/base"
done
for d in lc lc_cold lc_narrow; do  # the validation runs evaluate the same fine-tuned models
  mkdir -p "$OUT/$d/ft-yarn"; ln -sfn "../$d/ft-yarn" "$OUT/${d}_val/ft-yarn"
done
$LL $COMMON output_dir="$OUT/lc" 'methods=[none,linear,ntk,dynamic,yarn]'
$LL $COMMON output_dir="$OUT/lc_cold" 'methods=[yarn]' yarn_attention_factor=1.0
$LL $COMMON output_dir="$OUT/lc_narrow" 'methods=[yarn]' yarn_beta_slow=12
$LL $COMMON output_dir="$OUT/lc_val" 'methods=[yarn]' key_seed=2000
$LL $COMMON output_dir="$OUT/lc_cold_val" 'methods=[yarn]' yarn_attention_factor=1.0 key_seed=2000
$LL $COMMON output_dir="$OUT/lc_narrow_val" 'methods=[yarn]' yarn_beta_slow=12 key_seed=2000
for d in lc lc_cold lc_narrow lc_val lc_cold_val lc_narrow_val; do echo "== $d"; cat "$OUT/$d/table.md"; done
