#!/usr/bin/env bash
# The GPU checks still open for issue #7, in one call of the device tool (its run time: docs/benchmarks.md):
#   1. train-step variants not yet measured on a GPU: packed Threefry masks, one q/k/v mask, Triton GEMMs
#      (scripts/profile_gpu.py), against the full step in the same process;
#   2. the LM head's cross-entropy in the train step's form against autodiff (scripts/bench_lm_head.py);
#   3. the project's rows of the train-step table (scripts/bench_gpu.py --only jax).
# Each part has its own timeout, so one that hangs leaves the others' rows. Everything is printed and
# written to $OUT/gpu_checks.md (./gpu_checks.md without $OUT).
#
#   bash scripts/gpu_checks.sh          # on the GPU machine, from the repository root
#   bash scripts/gpu_checks.sh --cpu    # the same parts at tiny shapes on the CPU: exercises the script
#
# The device machine lacks ml_collections and tensorboardX and reaches no index. Fetch their wheels here
# once (`pip download --no-deps -d .whl ml_collections tensorboardX`; `.whl/` in .git/info/exclude) and
# name `.whl` in the run's carry: this script installs them when the import fails.
set -uo pipefail
cd "$(dirname "$0")/.."
report="${OUT:-.}/gpu_checks.md"
: >"$report"

if ! python3 -c "import ml_collections, tensorboardX" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "ml_collections/tensorboardX missing and no .whl/ carried" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "${1:-}" = "--cpu" ]; then
    profile=(--tiny) bench=(--cpu-small --steps 2) lm_steps=2
else
    profile=() bench=() lm_steps=5
fi

part() {  # part SECONDS TITLE COMMAND...: run one part under a timeout, its output into the report
    local seconds=$1 title=$2
    shift 2
    printf '\n## %s\n\n```\n$ %s\n' "$title" "$*" | tee -a "$report"
    local start=$SECONDS
    timeout "$seconds" "$@" 2>&1 | grep -v -e '^WARNING' -e '^I0000' | tee -a "$report"
    printf '```\n(exit %s, %s s)\n' "${PIPESTATUS[0]}" "$((SECONDS - start))" | tee -a "$report"
}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"; git log --oneline -1; } | tee -a "$report"
part 300 "train-step variants" python3 scripts/profile_gpu.py --train "${profile[@]}" \
    --train-variants full,threefry16,shared_qkv,triton_any
part 60 "LM head cross-entropy" python3 scripts/bench_lm_head.py --steps "$lm_steps"
part 180 "train-step table, project rows" python3 scripts/bench_gpu.py --only jax "${bench[@]}"
