#!/usr/bin/env bash
# Everything a lent accelerator should measure, in one command: PPO throughput rows (benchmarks/throughput.py), the
# MuJoCo throughput grid (benchmarks/mujoco_throughput.py) and the paper's curves (benchmarks/paper_curves.py),
# results under $OUT (default benchmarks/results).
#
#     bash benchmarks/gpu_all.sh                      # the gpu preset: hours on one GPU
#     PRESET=cpu-mujoco bash benchmarks/gpu_all.sh    # the CPU reproduction (<= 60 min on a quiet 2-core CPU)
#
# Toy budgets (what tests/test_paper_curves.py runs on a CPU): PRESET=smoke, and the *_ARGS variables below.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results}
PRESET=${PRESET:-gpu}
mkdir -p "$OUT"
# the last step's arguments are checked first (a typo must not surface after hours of the other steps)
# shellcheck disable=SC2086
$PY benchmarks/paper_curves.py --preset "$PRESET" --out "$OUT/paper_curves-$PRESET" --agents "${AGENTS:-runs/agents}" \
    ${CURVES_ARGS:-} --check > /dev/null || exit 2
echo "== throughput rows ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
# shellcheck disable=SC2086
$PY benchmarks/throughput.py ${THROUGHPUT_ARGS:---preset gpu} --json "$OUT/throughput-$PRESET.json"
echo "== MuJoCo throughput ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
# shellcheck disable=SC2086
$PY benchmarks/mujoco_throughput.py ${MUJOCO_ARGS:---envs 256,1024,2048 --backends positional,spring} \
    --json "$OUT/mujoco_throughput-$PRESET.json"
echo "== paper curves, preset $PRESET ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
# shellcheck disable=SC2086
$PY benchmarks/paper_curves.py --preset "$PRESET" --out "$OUT/paper_curves-$PRESET" --agents "${AGENTS:-runs/agents}" \
    ${CURVES_ARGS:-}
echo "== done ($(date -u +%H:%M:%S)): $OUT/throughput-$PRESET.json, $OUT/mujoco_throughput-$PRESET.json, $OUT/paper_curves-$PRESET/"
