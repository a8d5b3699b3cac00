#!/bin/bash
# Session 11, issue 18, addendum 3 (docs/LOG.md): YaRN default and YaRN narrow (yarn_beta_slow=12), 300
# fine-tune steps at 4T with endpoint_share=0.4 in the fine-tune only, on the plain base (share 0), over
# fine-tune seeds. `llmlab longctx` has no separate fine-tune seed: `seed` seeds the fine-tune's data order
# (loader seed+1) and torch (trainer), the base is linked in (not retrained), and the evaluation keys are
# seeded by seed + key_seed, so key_seed = KEYS - seed keeps the same keys for every seed (KEYS 2000:
# validation, 1000: the test keys of every table). 100 keys a length (per_cell=20) at 1T and 4T.
# All validation evaluations (which fine-tune) come first, then the test evaluations of the same models.
#   BASE=runs/s11_ctl/pk bash benchmarks/longctx_ftseeds.sh [OUT] [SEEDS]   # default runs/s11_fts, "0 1 2"
set -euo pipefail -f  # -f: no globbing (methods=[yarn])
OUT=${1:-runs/s11_fts}
SEEDS=${2:-0 1 2}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PYTHON:-python}
LL="$PY -m llmlab.cli longctx"
BASE=$(realpath -m "${BASE:-runs/s11_ctl/pk}")
COMMON="context=128 hidden_size=64 num_hidden_layers=2 num_attention_heads=2 passkey_fraction=0.5 copy_fraction=0.5
 copy_period=random passkey_loss=answer ft_steps=300 endpoint_share=0.4 per_cell=20 methods=[yarn] multiples=[1,4]"
declare -A ARM=([default]="" [narrow]="yarn_beta_slow=12")
for split in val test; do
  keys=$([ $split = val ] && echo 2000 || echo 1000)
  for s in $SEEDS; do
    for a in default narrow; do
      d="$OUT/$a-s$s"; mkdir -p "$d/$split"; ln -sfn "$BASE/base" "$d/$split/base"
      [ $split = test ] && ln -sfn ../val/ft-yarn "$d/test/ft-yarn"
      echo "== $(date -u +%T) $a seed $s $split"
      $LL $COMMON ${ARM[$a]} seed=$s key_seed=$((keys - s)) output_dir="$d/$split"
      cat "$d/$split/table.md"
    done
  done
done
