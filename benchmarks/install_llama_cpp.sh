#!/usr/bin/env bash
# Build and install llama-cpp-python once, for people who want llama.cpp beside us: the llama.cpp column of
# benchmarks/inference.py (and of run_quiet_21.sh with LLAMACPP=DIR) and tests/test_llamacpp_peer.py (skipped
# where it is absent). A source build (no wheel for CPU Linux): 828 s with JOBS=1 on the 2-core AVX2 EPYC under
# load (session 12, llama-cpp-python 0.3.36). Never run in CI; never an llmlab dependency.
#
#   bash benchmarks/install_llama_cpp.sh              # into the active Python environment
#   bash benchmarks/install_llama_cpp.sh DIR          # pip --target DIR; then run with PYTHONPATH=$PWD:DIR
#
# Env: PY (interpreter, default python3), JOBS (parallel compile jobs, default all cores), VERSION (a pin).
set -euo pipefail
case "${1:-}" in  # an option is not a target directory: show the usage above instead of installing into "-h"
    -*) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
PY=${PY:-python3}
JOBS=${JOBS:-$(nproc)}
SPEC="llama-cpp-python${VERSION:+==$VERSION}"
# GGML_NATIVE: compile for this CPU (AVX2 / AVX-512 / VNNI as the compiler finds them), as llama.cpp's own
# build does; the library is all we load, so no multimodal (mtmd), tools, examples, tests or curl.
export CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS
# --no-deps: its numpy/jinja2/typing-extensions are already ours (a --target copy would shadow them);
# diskcache is the one runtime import we do not have.
args=(-m pip install --no-deps --no-binary llama-cpp-python "$SPEC" diskcache)
if [ $# -ge 1 ]; then
    args+=(--target "$1")
    export PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}"
fi
start=$(date +%s)
"$PY" "${args[@]}"
echo "built and installed in $(( $(date +%s) - start )) s"
"$PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'from', llama_cpp.__file__)"
