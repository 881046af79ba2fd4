#!/usr/bin/env bash
# The GPU checks of the pipeline in one call of a lent GPU machine (../shared/device/README.md; carry
# .whl, made here by ../shared/device/wheels.sh). Each argument is one check, run in order:
#   gpu    the paper's model on one GPU: ... --configfile=config/gpu.yaml results/gpu/table1.csv, then
#          its qualitative figure
#   bench  lockstep training rate, K = 1, 2, 4, 8 next to the solo steps (benchmarks/bench_train.py)
#   cuda   the CUDA tests (pytest -m cuda: graphs vs eager, lockstep members vs solo on CUDA)
#   demo   the CPU demo's DAG on the GPU: snakemake --profile profiles/local results/table1.csv
# e.g. `DEADLINE=560 bash benchmarks/device_runs.sh gpu bench`. Each check gets its own limit (LIMIT_<check>
# seconds), cut so that the whole script ends within DEADLINE seconds (a call's limit) with its results
# packed. Results land in $OUT (default /tmp/device_runs): JSON lines, each DAG's log, tables and
# per-rule times (its benchmark files) as a .tgz, and summary.txt.
# On a CPU machine the same script runs as a smoke test (DEVICE=cpu: small bench; the DAGs as given).
set -uo pipefail
OUT=${OUT:-/tmp/device_runs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SNAKEMAKE=${SNAKEMAKE:-snakemake}

# the wheels of .whl into /tmp/site, once per machine (a warm machine keeps them between calls)
if [[ -f /tmp/site/.installed ]] || ! $PY -c "import snakemake" 2>/dev/null; then
  if [[ ! -f /tmp/site/.installed ]]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    touch /tmp/site/.installed
  fi
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
# DenseCRF's extension is built there from its sdist (about a minute), in the background: the paper-size
# DAG reaches its first DenseCRF job minutes later; the demo's DAG waits for the build.
if ! $PY -c "import pydensecrf.densecrf" 2>/dev/null && [[ -d .whl/src ]]; then
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/src/pydensecrf2-*.tar.gz \
    >"$OUT/densecrf_build.log" 2>&1 &
  CRF_BUILD=$!
fi
nvidia-smi -L 2>/dev/null | tee "$OUT/card.txt"

DEADLINE=${DEADLINE:-590}
# seconds a check may run: its LIMIT_<check> (or the default given), at most what the deadline leaves
limit() {
  local var=LIMIT_$1 left=$((DEADLINE - SECONDS - 15))
  local want=${!var:-$2}
  local n=$((want < left ? want : left))
  echo $((n > 1 ? n : 1)) # timeout 0 would mean no limit
}

wait_crf() { [[ -n "${CRF_BUILD:-}" ]] && { wait "$CRF_BUILD" || echo "pydensecrf2 build failed"; CRF_BUILD=; }; }

# seconds of each rule's runs (its benchmark files), one line per rule: runs, total, max
rule_times() {
  $PY - "$1" <<'EOF'
import sys, pathlib, collections
import pandas as pd
times = collections.defaultdict(list)
root = pathlib.Path(sys.argv[1]) / "benchmarks"
for f in sorted(root.rglob("*.tsv")):
    times[f.relative_to(root).parts[0]].append(float(pd.read_csv(f, sep="\t")["s"].iloc[0]))
for rule, s in times.items():
    print(f"{rule:20s} runs {len(s):3d}  total {sum(s):7.1f} s  max {max(s):6.1f} s")
EOF
}

# run a DAG with a wall-clock limit; print its wall time, Table 1 and the per-rule times; pack results
dag() {
  local name=$1 results=$2 limit=$3
  shift 3
  local t0=$SECONDS
  timeout "$limit" $SNAKEMAKE --profile profiles/local "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, wall $((SECONDS - t0)) s: snakemake --profile profiles/local $*" | tee -a "$OUT/summary.txt"
  grep -E "steps done|Finished jobid|Error in rule" "$OUT/$name.log" | tail -3
  { cat "$results/table1.md" 2>/dev/null; rule_times "$results"; } | tee -a "$OUT/summary.txt"
  tar czf "$OUT/$name.tgz" --exclude='*.pt' --exclude='*.h5' --exclude='*.json.gz' \
    "$results"/*.csv "$results"/*.md "$results"/benchmarks "$results"/logs "$results"/figures \
    "$results"/models/*/*/*/train_log.csv 2>/dev/null
}

for check in "$@"; do
  case $check in
  bench)
    if [[ $DEVICE == cpu ]]; then
      size=(--backbone tiny --size 64 --dims 16 --images 12 --batches 3 --repeats 1 --lockstep-loop-steps 10)
    else
      size=(--batches 40 --repeats 3 --lockstep-loop-steps 200)
    fi
    timeout "$(limit bench 90)" $PY benchmarks/bench_train.py --device "$DEVICE" --cases "" --lockstep 1,2,4,8 "${size[@]}" \
      --out "$OUT/lockstep.jsonl" >"$OUT/bench.log" 2>&1 || { echo "bench failed"; tail -20 "$OUT/bench.log"; }
    $PY benchmarks/bench_train.py --summarize "$OUT/lockstep.jsonl" | tee -a "$OUT/summary.txt"
    ;;
  demo)
    wait_crf
    dag demo results "$(limit demo 300)" results/table1.csv
    ;;
  gpu)
    dag gpu results/gpu "$(limit gpu 480)" --configfile=config/gpu.yaml results/gpu/table1.csv
    dag gpu_figure results/gpu "$(limit gpu_figure 60)" --configfile=config/gpu.yaml \
      results/gpu/figures/shapes/deeplab101/qualitative.png
    ;;
  cuda)
    timeout "$(limit cuda 90)" $PY -m pytest -q -x -p no:cacheprovider -m cuda tests >"$OUT/cuda_tests.log" 2>&1
    echo "== cuda tests: rc $?: $(tail -1 "$OUT/cuda_tests.log")" | tee -a "$OUT/summary.txt"
    ;;
  *) echo "unknown check $check (bench | demo | gpu)" >&2 ;;
  esac
done
