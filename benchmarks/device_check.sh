#!/usr/bin/env bash
# The GPU check of the fast training step (issues 13 and 18), one run on a lent GPU machine:
#   environment -> CUDA tests (pytest -m cuda) -> lockstep training (issue 18: K = 1, 2, 4, 8 trainings of
#   the paper's batch-1 setting in one process, next to each fusion alone, step and real loop) ->
#   bench_train.py: resnet101+RMI and +LSTM at 320, batch 1 eager vs CUDA graphs (fp32 with TF32 off and on,
#   today's defaults, cached trunk features), batch 8 bf16, the real rmi.train.run loop, predict throughput
#   by batch size -> summary table (printed last).
#
#   device tool, repo root, carry [".whl"]:  bash benchmarks/device_check.sh
#   only some stages (e.g. issue 18's):  ONLY="gpu torch cuda-tests lockstep" bash benchmarks/device_check.sh
#   dry run on a CPU:  DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/check bash benchmarks/device_check.sh
#
# .whl/ holds the wheels the machine lacks (pycocotools for cp312: see the README of the device
# tool). Writes $OUT/log.txt (everything) and $OUT/bench.jsonl (one JSON line per measurement).
# Every stage has a time limit and a failing stage does not stop the next; all stages together
# stop after BUDGET seconds (default 540; issue 13's stages alone took ~4 min on an H100, so a full run
# may cut the last ones). ONLY names the stages to run, space-separated (wheels always runs).
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/rmi-device-check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
ONLY=${ONLY:-}
mkdir -p "$OUT"
LOG=$OUT/log.txt
JSONL=$OUT/bench.jsonl
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
START=$SECONDS

stage() { # stage NAME SECONDS COMMAND...: run under a time limit (cut to what is left of BUDGET), log all
    local name=$1 limit=$2 left=$((BUDGET - (SECONDS - START)))
    shift 2
    [[ -z $ONLY || $name == wheels || " $ONLY " == *" $name "* ]] || return 0
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        echo "=== $name: skipped, budget of ${BUDGET}s spent" | tee -a "$LOG"
        return
    fi
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s" | tee -a "$LOG"
}

if ! "$PY" -c "import pycocotools" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    stage wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [[ $DEVICE == cuda ]]; then
    BENCH=(--device cuda --data "$DATA" --out "$JSONL")
    LOOP_STEPS=300 PREDICT_CAP=1024 LOCKSTEP_LOOP_STEPS=600
else # small sizes: checks that every stage runs, numbers mean nothing
    BENCH=(--device cpu --backbone tiny --size 64 --dims 16 --images 12 --batches 3 --repeats 1
        --data "$DATA" --out "$JSONL")
    LOOP_STEPS=20 PREDICT_CAP=8 LOCKSTEP_LOOP_STEPS=20
fi

stage gpu 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
stage torch 30 "$PY" -c 'import pycocotools, torch
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if cuda else "no GPU")
print("TF32 defaults: matmul", torch.backends.cuda.matmul.allow_tf32, "cudnn", torch.backends.cudnn.allow_tf32)'
stage cuda-tests 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_train_step.py \
    tests/test_lockstep.py
stage lockstep 240 "$PY" benchmarks/bench_train.py "${BENCH[@]}" --fusions rmi,lstm --cases "" --lockstep 1,2,4,8 \
    --lockstep-loop-steps "$LOCKSTEP_LOOP_STEPS"
stage train-rmi-b1 90 "$PY" benchmarks/bench_train.py "${BENCH[@]}" --fusions rmi --cases b1-
stage train-lstm-b1 70 "$PY" benchmarks/bench_train.py "${BENCH[@]}" --fusions lstm --cases b1-
stage train-b8 90 "$PY" benchmarks/bench_train.py "${BENCH[@]}" --fusions rmi,lstm --cases b8-
stage predict 60 "$PY" benchmarks/bench_train.py "${BENCH[@]}" --fusions rmi,lstm --cases "" \
    --predict tf32,bf16 --predict-cap "$PREDICT_CAP"
stage train-loop 60 "$PY" benchmarks/bench_train.py "${BENCH[@]}" --fusions rmi --cases "" --loop-steps "$LOOP_STEPS"
echo "=== summary after $((SECONDS - START))s" | tee -a "$LOG"
"$PY" benchmarks/bench_train.py --summarize "$JSONL" 2>&1 | tee -a "$LOG"
