#!/usr/bin/env bash
# The short accelerator check (about 5 minutes on one GPU): PPO throughput against PureJaxRL's H100 anchors
# (benchmarks/throughput.py's gpu rows, one timed run each) and brax/hopper env steps/s at large env counts
# (benchmarks/mujoco_throughput.py), then the product end to end on the device: `jaxmod ultra` as `make demo` runs it
# (CartPole-v1, 5 seeds, the embedded scripted advisor) and benchmarks/paper_curves.py's smoke preset (brax, the
# teacher advisor, every method). Each step runs under its own time limit, so one slow step keeps the others'
# results. For the full set (the paper's gpu preset: hours) run benchmarks/gpu_all.sh.
#
#     OUT=/tmp/out bash benchmarks/gpu_quick.sh       # results and logs under $OUT (default benchmarks/results/gpu)
#     STEPS=ultra,curves bash benchmarks/gpu_quick.sh # some of the steps: throughput, mujoco, ultra, curves
#
# On a machine without jaxmod's dependencies, put their wheels in .whl/ first (any missing package not already
# installed there): they are installed into /tmp/site with no network.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
STEPS=${STEPS:-throughput,mujoco,ultra,curves}
for s in ${STEPS//,/ }; do
    case $s in throughput|mujoco|ultra|curves) ;;
        *) echo "gpu_quick.sh: unknown step '$s' in STEPS=$STEPS: give some of throughput,mujoco,ultra,curves" >&2; exit 2;;
    esac
done
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null | tee "$OUT/device.txt"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, \
jax.devices())" 2>&1 | tee -a "$OUT/device.txt"
step() { [[ ",$STEPS," == *",$1,"* ]]; }
step throughput && echo "== throughput rows ($(date -u +%H:%M:%S))"
step throughput && timeout "${THROUGHPUT_S:-200}" $PY benchmarks/throughput.py --preset gpu --repeats "${REPEATS:-1}" \
    --json "$OUT/throughput-gpu.json" 2>&1 | tee "$OUT/throughput.log"
step mujoco && echo "== MuJoCo throughput ($(date -u +%H:%M:%S))"
step mujoco && timeout "${MUJOCO_S:-120}" $PY benchmarks/mujoco_throughput.py --tasks brax/hopper --envs "${MUJOCO_ENVS:-2048,8192}" \
    --backends positional --seeds 1 --no-cache-check --repeats 1 --json "$OUT/mujoco_throughput-gpu.json" 2>&1 \
    | tee "$OUT/mujoco.log"
if step ultra; then
    echo "== jaxmod ultra, CartPole-v1, 5 seeds, scripted advisor ($(date -u +%H:%M:%S))"
    rm -rf /tmp/gpu_quick_demo
    timeout "${ULTRA_S:-150}" $PY -m jaxmod ultra --env CartPole-v1 --seeds 5 --advisor scripted \
        --out /tmp/gpu_quick_demo 2>&1 | tee "$OUT/ultra.log"
    cp /tmp/gpu_quick_demo/*.md "$OUT/" 2>/dev/null
fi
if step curves; then
    echo "== paper curves, smoke preset ($(date -u +%H:%M:%S))"
    rm -rf /tmp/gpu_quick_curves /tmp/gpu_quick_agents
    timeout "${CURVES_S:-220}" $PY benchmarks/paper_curves.py --preset smoke --out /tmp/gpu_quick_curves \
        --agents /tmp/gpu_quick_agents 2>&1 | tee "$OUT/curves.log"
    cp /tmp/gpu_quick_curves/paper_curves.md "$OUT/paper_curves-smoke.md" 2>/dev/null
fi
echo "== done ($(date -u +%H:%M:%S))"
