#!/usr/bin/env bash
# The whole GPU benchmark suite in ONE call of at most 10 minutes on a rented H100/H200:
#   (a) install the wheels in .whl/ (benchmarks/make_wheels.sh, run beforehand where pip
#       works) into /tmp/site, offline;
#   (b) the memory layer vs titans-pytorch   (benchmarks/memory_bench.py)
#   (c) whole-model training steps, 170m mag/mal/swa at 4K tokens, bf16
#                                            (benchmarks/model_bench.py)
#       with a profile of one step per variant (time per scope, ops per step, busy)
#   (d) where the memory layer's time goes    (benchmarks/memory_profile.py)
#   (e) a short sequence-length sweep        (benchmarks/seq_sweep.py)
#   (f) long-range recall, swa/lmm/mag/mal/mac (benchmarks/recall.py --size gpu), only
#       with RECALL=1, which skips (b)–(e): a call of its own (T_RECALL, default 540 s;
#       the JSON is rewritten after every run, so a cut-short suite keeps what it had)
# Every step has its own timeout, so a slow one cannot eat the others' time, and every
# benchmark rewrites its JSON after each point, so a step cut short keeps what it had.
# Results (JSON, PNG, one log) go to $OUT (default ./gpu_out).
#
#   bash benchmarks/make_wheels.sh                  # here, once
#   bash benchmarks/gpu_suite.sh                    # there: carry .whl, timeout_s 600
#
# Budgets (seconds) can be changed: T_MEM, T_MODEL, T_PROF, T_SWEEP; sizes: PRESET, MODEL_SEQ,
# MODEL_BATCH, MEM_ARGS, PROF_ARGS, SWEEP_TOKENS, SWEEP_SEQS, SWEEP_VARIANTS (a CPU dry
# run: PRESET=tiny MODEL_SEQ=64 SWEEP_SEQS="32 64" MEM_ARGS="--seq 256 --chunks 16
# --repeats 1" PROF_ARGS="--chunk 16 --seq 256").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
LOG="$OUT/suite.log"
T_MEM=${T_MEM:-100}
T_MODEL=${T_MODEL:-220}
T_PROF=${T_PROF:-50}
T_SWEEP=${T_SWEEP:-150}
PRESET=${PRESET:-170m}
MODEL_SEQ=${MODEL_SEQ:-4096}
MODEL_BATCH=${MODEL_BATCH:-4}
MEM_ARGS=${MEM_ARGS:-"--chunks 16 64 --seq 1024 4096 --repeats 2"}
PROF_ARGS=${PROF_ARGS:-"--chunk 16 --seq 4096"}
SWEEP_TOKENS=${SWEEP_TOKENS:-16384}
SWEEP_SEQS=${SWEEP_SEQS:-"1024 4096 16384"}
SWEEP_VARIANTS=${SWEEP_VARIANTS:-"swa mag lmm"}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$LOG"; }

# (a) wheels -----------------------------------------------------------------------
if compgen -G ".whl/*.whl" > /dev/null; then
  say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 || say "WARNING: wheel install failed"
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  say "no .whl/ here: using the installed packages"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u; uptime; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv 2>&1 || true
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1
  "$PY" -c "import torch, titans_pytorch; print('torch', torch.__version__)" 2>&1
  git log -1 --format='commit %H %s' 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"

step() {  # step NAME SECONDS CMD... : run with a hard timeout, log its output
  local name=$1 secs=$2; shift 2
  say "== $name (timeout ${secs}s): $*"
  timeout --signal=TERM --kill-after=10 "$secs" "$@" >> "$LOG" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && say "   $name: TIMED OUT after ${secs}s (partial JSON kept)" \
                  || say "   $name: exit $rc"
}

if [ "${RECALL:-0}" != 1 ]; then
# shellcheck disable=SC2086
# (b) memory layer vs titans-pytorch -------------------------------------------------
# Full fp32 matmuls (no TF32): its outputs are checked against titans-pytorch's at 1e-4.
# It writes its JSON only at the end; if cut short, its table rows are in suite.log.
XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest step memory_bench "$T_MEM" \
  "$PY" benchmarks/memory_bench.py $MEM_ARGS --json "$OUT/memory_bench.json"

# (c) whole model, 170m, 4K tokens, bf16, and a profile of one step of each -----------
# The profile says what limits MFU: the share of each scope (memory blocks, the rest of
# the memory, attention, ffn, other), kernels per step and the device's busy fraction.
step model_bench "$T_MODEL" \
  "$PY" benchmarks/model_bench.py --preset "$PRESET" --variants mag mal swa --seq "$MODEL_SEQ" \
  --batch "$MODEL_BATCH" --dtype bf16 --steps 5 --profile 1 --out "$OUT/model_bench.json"

# (d) the memory layer's f+b by op group, chunk 16 at 4K (fp32, as memory_bench) --------
XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest step memory_profile "$T_PROF" \
  "$PY" benchmarks/memory_profile.py $PROF_ARGS --top 20 --json "$OUT/memory_profile.json"

# (e) short sequence sweep -------------------------------------------------------------
# shellcheck disable=SC2086
step seq_sweep "$T_SWEEP" \
  "$PY" benchmarks/seq_sweep.py --preset "$PRESET" --variants $SWEEP_VARIANTS --seqs $SWEEP_SEQS \
  --tokens "$SWEEP_TOKENS" --dtype bf16 --steps 3 --max_step_s 20 \
  --time_budget_s $(( T_SWEEP - 45 )) --out "$OUT/seq_sweep.json" --plot "$OUT/seq_sweep.png"
if [ -f "$OUT/seq_sweep.json" ] && [ ! -f "$OUT/seq_sweep.png" ]; then  # cut short: plot what it has
  "$PY" -c "import json, sys; sys.path.insert(0, 'benchmarks'); import seq_sweep; \
seq_sweep.plot(json.load(open('$OUT/seq_sweep.json')), '$OUT/seq_sweep.png')" >> "$LOG" 2>&1
fi
fi  # RECALL != 1
# (f) long-range recall (issue 14): its own call, RECALL=1 ------------------------------
if [ "${RECALL:-0}" = 1 ]; then
  step recall "${T_RECALL:-540}" "$PY" benchmarks/recall.py --size gpu --out "$OUT/recall"
fi
say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
