#!/bin/bash
# One GPU-machine run (device tool): build the kernels, check a wheel install, run the demo and the whole test suite;
# with --bench instead the propagation and tower benchmarks and Nsight Compute profiles. Everything lands in $OUT.
# Wheels of what the machine lacks (kernels, a newer transformers, datasets, evaluate, open_clip_torch, ...) and the
# cgspn wheel are carried in .whl/ (made here by benchmarks/device_wheels.sh). Each call stays under the device's
# 10 minutes: the default run (build, wheel check, demo, suite) in one call, `--bench` in another, `--towers` (the
# tower variants: cuDNN attention first, compiled layers) in a third.
set -o pipefail
OUT=${OUT:-/tmp/cgspn_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt"
python3 kernels_src/build.py > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }

if [ "$1" = "--towers" ]; then  # the hybrid tower with cuDNN attention first (eager), then compiled (regional)
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  timeout 200 python3 benchmarks/bench_tower.py --towers hybrid hybrid_cudnn --resolutions 1036 2058 \
    --out "$OUT/tower_cudnn.json" 2>&1 | tee "$OUT/tower_cudnn.txt" | grep -E "^ *[0-9]+ B=|target"
  timeout 330 python3 benchmarks/bench_tower.py --compile --towers hybrid --resolutions 2058 378 \
    --out "$OUT/tower_compiled.json" 2>&1 | tee "$OUT/tower_compiled.txt" | grep -E "^ *[0-9]+ B=|target"
  exit
fi

if [ "$1" = "--bench" ]; then
  python3 benchmarks/bench_propagation.py --out "$OUT/propagation.json" 2>&1 | tee "$OUT/bench.txt" | tail -30
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 benchmarks/bench_tower.py --memory --out "$OUT/tower.json" 2>&1 | tee "$OUT/tower.txt" | tail -30
  for pass in fwd bwd; do  # the CUDA scan kernels at 2058 px
    extra=""; [ "$pass" = bwd ] && extra="--backward"
    timeout 120 ncu -k regex:propagate_$pass --launch-skip 1 --launch-count 1 --section SpeedOfLight \
      --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      python3 benchmarks/profile_propagation.py --backend cuda --grid 147 $extra > "$OUT/ncu_${pass}_cuda.txt" 2>&1
  done
  exit
fi

# The wheel in a fresh venv outside the repository (the machine's packages through a .pth file).
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
python3 -m venv /tmp/wheel-venv && python3 -c "$purelib" > "$(/tmp/wheel-venv/bin/python -c "$purelib")/deps.pth"
/tmp/wheel-venv/bin/python -m pip install -q --no-index --no-deps .whl/cgspn/cgspn-*.whl
(cd /tmp && PYTHONPATH=/tmp/site CGSPN_KERNEL_CACHE=/tmp/kcache /tmp/wheel-venv/bin/cgspn kernels build \
  && PYTHONPATH=/tmp/site CGSPN_KERNEL_CACHE=/tmp/kcache /tmp/wheel-venv/bin/cgspn kernels-info --json) \
  > "$OUT/wheel_kernels_info.json" 2> "$OUT/wheel_kernels_info.err" &

(python3 -m cgspn.cli demo --output-dir /tmp/demo > "$OUT/demo.log" 2>&1; cp /tmp/demo/results.json "$OUT/demo_results.json") &
timeout 500 python3 -m pytest -n 10 -q -p no:cacheprovider -rfEx > "$OUT/gpu_tests.log" 2>&1
wait
tail -3 "$OUT/demo.log"; tail -3 "$OUT/gpu_tests.log"
