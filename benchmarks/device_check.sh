#!/usr/bin/env bash
# The GPU checks, one run on a lent GPU machine; stages in this order:
#   environment -> CUDA tests (pytest -m cuda) -> lockstep training (K = 1, 2, 4, 8 trainings of
#   the paper's batch-1 setting in one process, next to each fusion alone, step and real loop) ->
#   bench_train.py: resnet101+RMI and +LSTM at 320, batch 1 eager vs CUDA graphs (fp32 with TF32 off and on,
#   today's defaults, cached trunk features), batch 8 bf16, the real rmi.train.run loop, predict throughput
#   by batch size -> summary table -> whole DAGs with profiles/local: gpu-dag (config/gpu.yaml's Table 1
#   and its qualitative figure, one snakemake call) and demo-dag (the CPU demo's Table 1 on the GPU).
#
#   device tool, repo root, carry [".whl"]:  bash benchmarks/device_check.sh
#   only some stages:  ONLY="gpu lockstep" bash benchmarks/device_check.sh;  ONLY="gpu-dag demo-dag" ...
#   dry run on a CPU:  DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/check bash benchmarks/device_check.sh
#
# .whl/ holds the wheels the machine lacks (../shared/device/wheels.sh: snakemake and its dependencies,
# pycocotools, the pydensecrf2 sdist). Writes $OUT/log.txt (everything), $OUT/bench.jsonl (one JSON line
# per measurement) and per DAG $OUT/<dag>.tgz (tables, logs, metrics, benchmark files).
# Every stage has a time limit and a failing stage does not stop the next; all stages together
# stop after BUDGET seconds (default 540). ONLY names the stages to run, space-separated (wheels always runs).
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
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# DenseCRF's extension, built there from its sdist (about a minute) in the background: the paper-size DAG
# reaches its first densecrf job minutes later; the demo's DAG waits for the build.
if ! "$PY" -c "import pydensecrf.densecrf" 2>/dev/null && compgen -G ".whl/src/pydensecrf2-*" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/src/pydensecrf2-* \
        >"$OUT/densecrf_build.log" 2>&1 &
    CRF_BUILD=$!
fi

dag_report() { # dag_report NAME RESULTS_DIR: Table 1, seconds per rule (its benchmark files), results packed
    local name=$1 results=$2
    { cat "$results/table1.md" 2>/dev/null || echo "no $results/table1.md"; } | tee -a "$LOG"
    "$PY" - "$results" <<'EOF' 2>&1 | tee -a "$LOG"
import collections, pathlib, sys
import pandas as pd
times = collections.defaultdict(list)
root = pathlib.Path(sys.argv[1]) / "benchmarks"
for f in sorted(root.rglob("*.tsv")):
    times[f.relative_to(root).parts[0]].append(float(pd.read_csv(f, sep="\t")["s"].iloc[0]))
for rule, s in times.items():
    print(f"{rule:20s} jobs {len(s):3d}  total {sum(s):7.1f} s  max {max(s):6.1f} s")
EOF
    tar czf "$OUT/$name.tgz" --exclude='*.pt' --exclude='*.pth' --exclude='*.h5' "$results"/*.csv "$results"/*.md \
        "$results"/benchmarks "$results"/logs "$results"/metrics "$results"/figures "$results"/models 2>/dev/null
}

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
if [[ -s $JSONL ]]; then
    echo "=== summary after $((SECONDS - START))s" | tee -a "$LOG"
    "$PY" benchmarks/bench_train.py --summarize "$JSONL" 2>&1 | tee -a "$LOG"
fi

if [[ -z $ONLY || " $ONLY " == *" gpu-dag "* ]]; then
    stage gpu-dag 560 snakemake --profile profiles/local --configfile=config/gpu.yaml results/gpu/table1.csv \
        results/gpu/figures/shapes/deeplab101/qualitative.png
    dag_report gpu results/gpu
fi
if [[ -z $ONLY || " $ONLY " == *" demo-dag "* ]]; then
    [[ -n ${CRF_BUILD:-} ]] && wait "$CRF_BUILD"
    stage demo-dag 300 snakemake --profile profiles/local results/table1.csv
    dag_report demo results
fi
