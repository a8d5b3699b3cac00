#!/bin/bash
# The long-context studies of docs/model.md "Long context" (docs/LOG.md, issue 18, sessions 9, 11, 12), one driver.
# Every run is `llmlab longctx` on a 2-layer, 64-wide passkey base trained at T=128 by benchmarks/passkey_recipe.py
# (a rerun reuses a trained base and skips finished rows). AVX2 EPYC, one quiet core:
#   bash benchmarks/longctx_study.sh [s9] [OUT]            # session 9 (default OUT=runs/s9, ~35 min): the base to 24k
#       steps (rate decayed from 16k, best-on-validation checkpoint), every method with and without 300 fine-tune
#       steps at 4T on the test keys, and YaRN as is / temperature off / ramp narrowed on validation and test keys.
#   bash benchmarks/longctx_study.sh endpoints [OUT]       # session 11 (default OUT=runs/s11, ~25 min): the base with
#       a share SHARE (default 0.4) of the passkey rows at exactly depth 0 or 1 (mix.py endpoint_share; stops after
#       2 probes in a row at 100 % validation keys), then YaRN and PI fine-tuned with the same share on the test
#       keys (25 a length), on 100 test keys at 1T and 4T, YaRN on validation keys, and none / NTK / dynamic.
#       BASE=DIR reuses (or trains into) another base, e.g. SHARE=0's base under another fine-tune share.
#   bash benchmarks/longctx_study.sh ftseeds [OUT] [SEEDS]  # session 11 addendum 3 / session 12 (default OUT=
#       runs/s11_fts, SEEDS "0 1 2", ~1 min a run): YaRN arms ARMS (default "default narrow"; also late, long)
#       fine-tuned 300 steps at 4T with endpoint_share 0.4, over fine-tune seeds, on the plain base BASE (default
#       runs/s11_ctl/pk; trained with share 0 if missing), 100 keys a length at 1T and 4T on the key sets SPLITS
#       (default "val test"; val2: a second validation set). `seed` seeds the fine-tune and shifts the evaluation
#       keys, so key_seed = K - seed (val 2000, val2 3000, test 1000) gives every seed the same keys. val fine-tunes
#       (ARM-sS/val/ft-yarn); val2 and test evaluate those models.
# PYTHON names the interpreter (default python); DRY_RUN=1 prints the runs instead of running them.
set -euo pipefail -f  # -f: no globbing (methods=[yarn])
STUDY=s9
case ${1:-} in s9 | endpoints | ftseeds) STUDY=$1; shift ;; esac
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PYTHON:-python}
RUN=""
[ "${DRY_RUN:-0}" = 1 ] && RUN=echo
LL="$RUN $PY -m llmlab.cli longctx"
MODEL="context=128 hidden_size=64 num_hidden_layers=2 num_attention_heads=2 passkey_fraction=0.5 copy_fraction=0.5
 copy_period=random passkey_loss=answer ft_steps=300"

base() {  # DIR RECIPE-OPTIONS...: train the passkey base into DIR/base unless it is there
  local dir=$1; shift
  [ -f "$dir/base/selected.json" ] || $RUN $PY benchmarks/passkey_recipe.py --out "$dir" --heads 2 --layers 2 \
    --passkey-fraction 0.5 --copy-fraction 0.5 --every 1000 --keep-every 1000 --select best "$@"
}

link() {  # BASE DIR...: every DIR gets base -> BASE/base
  local b=$1 d; shift
  for d in "$@"; do mkdir -p "$d"; ln -sfn "$b/base" "$d/base"; done
}

tables() {  # DIR...
  [ -n "$RUN" ] && return 0
  for d in "$@"; do echo "== $d"; cat "$d/table.md"; done
}

s9() {
  local out=${1:-runs/s9}
  base "$out/pk24" --steps 24000 --decay-from 16000 --min-lr 0.1
  local b d all=""
  b=$(realpath -m "$out/pk24")
  for d in lc lc_cold lc_narrow lc_val lc_cold_val lc_narrow_val; do all="$all $out/$d"; done
  link "$b" $all
  for d in lc lc_cold lc_narrow; do  # the validation runs evaluate the same fine-tuned models
    mkdir -p "$out/$d/ft-yarn"; ln -sfn "../$d/ft-yarn" "$out/${d}_val/ft-yarn"
  done
  $LL $MODEL output_dir="$out/lc" 'methods=[none,linear,ntk,dynamic,yarn]'
  $LL $MODEL output_dir="$out/lc_cold" 'methods=[yarn]' yarn_attention_factor=1.0
  $LL $MODEL output_dir="$out/lc_narrow" 'methods=[yarn]' yarn_beta_slow=12
  $LL $MODEL output_dir="$out/lc_val" 'methods=[yarn]' key_seed=2000
  $LL $MODEL output_dir="$out/lc_cold_val" 'methods=[yarn]' yarn_attention_factor=1.0 key_seed=2000
  $LL $MODEL output_dir="$out/lc_narrow_val" 'methods=[yarn]' yarn_beta_slow=12 key_seed=2000
  tables $all
}

endpoints() {
  local out=${1:-runs/s11} share=${SHARE:-0.4} b m
  b=$(realpath -m "${BASE:-$out/pk}")
  base "$b" --steps 16000 --endpoint-share "$share" --stop-full 2
  local c="$MODEL endpoint_share=$share"
  link "$b" "$out/lc" "$out/lc_100" "$out/lc_val"
  for m in yarn linear; do  # lc_100 and lc_val evaluate the models lc fine-tuned
    mkdir -p "$out/lc/ft-$m"; ln -sfn "../lc/ft-$m" "$out/lc_100/ft-$m"
  done
  ln -sfn ../lc/ft-yarn "$out/lc_val/ft-yarn"
  $LL $c output_dir="$out/lc" 'methods=[yarn,linear]'
  $LL $c output_dir="$out/lc_100" 'methods=[yarn,linear]' per_cell=20 'multiples=[1,4]'
  $LL $c output_dir="$out/lc_val" 'methods=[yarn]' key_seed=2000
  $LL $c output_dir="$out/lc" 'methods=[none,linear,ntk,dynamic,yarn]'
  tables "$out/lc" "$out/lc_100" "$out/lc_val"
}

ftseeds() {
  local out=${1:-runs/s11_fts} seeds=${2:-0 1 2} b split s a d
  b=$(realpath -m "${BASE:-runs/s11_ctl/pk}")
  base "$b" --steps 16000 --endpoint-share 0 --stop-full 2  # session 11's control base
  local c="$MODEL endpoint_share=0.4 per_cell=20 methods=[yarn] multiples=[1,4]"
  declare -A arm=([default]="" [narrow]="yarn_beta_slow=12"
    [late]="yarn_beta_slow=12 endpoint_share=0.6 endpoint_depth1=0.6667" [long]="yarn_beta_slow=12 ft_steps=600")
  declare -A keys=([val]=2000 [val2]=3000 [test]=1000)
  for split in ${SPLITS:-val test}; do
    [ -n "${keys[$split]:-}" ] || { echo "SPLITS: unknown $split (val, val2, test)" >&2; exit 2; }
    for s in $seeds; do
      for a in ${ARMS:-default narrow}; do
        [ -n "${arm[$a]+set}" ] || { echo "ARMS: unknown $a (default, narrow, late, long)" >&2; exit 2; }
        d="$out/$a-s$s"; link "$b" "$d/$split"
        [ "$split" = val ] || ln -sfn ../val/ft-yarn "$d/$split/ft-yarn"
        echo "== $(date -u +%T) $a seed $s $split"
        $LL $c ${arm[$a]} seed=$s key_seed=$((keys[$split] - s)) output_dir="$d/$split"
        [ -n "$RUN" ] || cat "$d/$split/table.md"
      done
    done
  done
}

$STUDY "$@"
