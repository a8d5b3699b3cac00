#!/usr/bin/env bash
# Issue 21's goal ratios in one run, for a QUIET machine (the ratios divide by limits measured in
# the same run, so they are only meaningful without other load). Prints the JSON lines of:
#   inference.py --roofline-only: bandwidth and GEMM ceiling (the roofline), decode_roofline exact /
#     int8 (/ Python layers), batch32_gemm_eff exact / int8, at 2 threads (the limits take the best
#     of 1 and 2 threads); then the same with LLMLAB_PARALLEL_MACS=2000000 (session 9's threshold:
#     the control arm of session 10's change);
#   inference_features.py --only spec: spec_speedup (prompt lookup vs plain, greedy): int8 and
#     exact at 1 thread in full (int8 was the headline in sessions 7-9; since session 10 a 5-row
#     exact verification costs ~1.6 batch-1 steps' products against ~3.1 with int8 on AVX2), int8
#     at 2 threads as a --quick row;
#   inference_features.py --only prefix --quick: prefix_cache_ttft (8 requests sharing a 500-token
#     system prompt; the goal's 32 x 1,000 was met in session 5), at 2 threads;
#   with LLAMACPP=<dir of llama-cpp-python> set (benchmarks/install_llama_cpp.sh DIR builds it there):
#     llama.cpp itself beside ours in the roofline runs (same GGUF, threads, prompt ids, greedy,
#     alternating): peer.llama_cpp_decode_roofline against the same measured limit, at 2 threads
#     and again at 1 thread (roofline_1thread);
#   decode_overhead.py: the batch-1 step's pieces at 2 and 1 threads, session 12's path beside today's;
#   with GGML=<ggml checkout> set: llama.cpp's batch-1 block products (benchmarks/llamacpp_matvec.c)
#     beside ours (matvec_shapes.c, int8 and exact), per matrix and per token, 1 and 2 threads.
# Usage, from the repo root:  bash benchmarks/run_quiet_21.sh [--quick]   (full: 2 min 3 s on the
# quiet AVX2 EPYC in session 9; session 10 adds a second roofline run and the exact spec run in
# full: an estimated 3-4 minutes; --quick: the dry run for a loaded machine).
# Set PY to the interpreter (default: .venv/bin/python). Output also kept in runs/quiet_21/.
# Each run's JSON line gets "run", "threads" and "int8" (LLMLAB_INT8_ACTIVATIONS) in front.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
T2=${T2:-2}  # the "2 threads" of the runs below (T2=1 for a dry run on a loaded machine)
QUICK=${1:-}
OUT=runs/quiet_21
mkdir -p "$OUT"
export PYTHONPATH=$PWD${LLAMACPP:+:$LLAMACPP} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() {  # name threads int8(0/1) command...
    local name=$1 nt=$2 i8=$3; shift 3
    local t0=$(date +%s)
    OMP_NUM_THREADS=$nt LLMLAB_INT8_ACTIVATIONS=$i8 "$PY" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "# $name: threads=$nt int8_activations=$i8 rc=$rc $(( $(date +%s) - t0 )) s: $*"
    grep '^{"benchmark"' "$OUT/$name.log" | sed "s/^{/{\"run\": \"$name\", \"threads\": $nt, \"int8\": $i8, /"
}
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
# the full run: the roofline as session 8's goal runs (--quick: 8 batch-1 and 4 32-row steps per
# variant, alternating), spec_speedup in full (4 prompts x 128 tokens) for int8 and exact, the other
# speculation row at --quick (1 prompt x 48 tokens), prefix caching at --quick (8 requests x 500
# shared tokens: a check that the met goal holds; its full size, 32 x 1,000, would add ~4 minutes)
FULL=""; [ "$QUICK" = --quick ] && FULL=--quick
run roofline $T2 0 benchmarks/inference.py --roofline-only --quick  # measures exact and int8 itself
# session 10's control arm: batch-1 layer products on one core as in sessions 4-9 (2M multiply-adds
# before a call may split; now 250k, so the thread tuner's per-layer pick applies to them)
LLMLAB_PARALLEL_MACS=2000000 run roofline_macs2M $T2 0 benchmarks/inference.py --roofline-only --quick --no-llama-cpp
# session 12: ours and llama.cpp at one thread each (only with LLAMACPP: ~1 minute)
[ -n "${LLAMACPP:-}" ] && run roofline_1thread 1 0 benchmarks/inference.py --roofline-only --quick
# session 13: where a batch-1 step's time goes (decode_overhead.py, ~50 s), int8: session 12's path (a region per
# product, the head in Python, scalar input rounding), session 13's last (no batch-1 short path in the int8
# kernel), session 14's last (+ that short path), the defaults (session 15: + attention's scores and softmax
# and SiLU on 8 lanes, the non-temporal weight prefetch), 1 thread; the bandwidth as the median of probes
# between the arms (session 14) and the old single read beside it (*_oldbw)
run overhead $T2 1 benchmarks/decode_overhead.py --arms 2:0:1:0:0:0:0:0:0:0:0:0:0,2:1:1:1:1:1:1:0:0:0:0:0:0,2:1:1:1:1:1:1:0:1:0:0:0:0,2:1:1,1:1:1 --rounds 5 --steps 32
run spec_int8_1thread 1 1 benchmarks/inference_features.py --only spec $FULL
run spec_exact_1thread 1 0 benchmarks/inference_features.py --only spec $FULL  # full since session 10
run spec_int8_2threads $T2 1 benchmarks/inference_features.py --only spec --quick
run prefix $T2 0 benchmarks/inference_features.py --only prefix --quick
# session 11: llama.cpp's batch-1 block products beside ours, per matrix (C harnesses, no llama.cpp
# build): only with GGML=<a checkout of github.com/ggml-org/ggml> (session 11: /tmp/w21/ggml,
# commit d99724f); ~1 minute. Each line: a product's time; "products per token" = 30 layers + head.
if [ -n "${GGML:-}" ] && [ -f "$GGML/src/ggml-cpu/arch/x86/quants.c" ]; then
    S=$GGML/src; B=$OUT/bin; mkdir -p "$B"
    cc -O3 -march=native -c -I$S/ggml-cpu -I$S -I$GGML/include $S/ggml-cpu/arch/x86/quants.c -o $B/ggml_q.o &&
    cc -O3 -march=native -fopenmp -o $B/lmv benchmarks/llamacpp_matvec.c $B/ggml_q.o -lm &&
    cc -O3 -march=native -fopenmp -o $B/mv_i8 benchmarks/matvec_shapes.c -lm &&
    cc -O3 -march=native -fopenmp -DEXACT -o $B/mv_exact benchmarks/matvec_shapes.c -lm || echo "# build failed"
    per_token() { awk '{for (i = 1; i <= NF; i++) if ($i == "us") t = $(i - 1); s += ($1 == "LM") ? t : 30 * t}
                       END {printf "# products per token %.2f ms\n", s / 1000}'; }
    for nt in 1 $T2; do for r in 1 2; do for b in lmv mv_i8 mv_exact; do
        echo "# $b batch 1, $nt threads, round $r"; "$B/$b" 1 $nt | tee "$OUT/$b.$nt.$r.txt"; per_token < "$OUT/$b.$nt.$r.txt"
    done; done; done
fi
echo "# done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
