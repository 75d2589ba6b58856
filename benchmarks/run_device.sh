#!/bin/bash
# One GPU-machine run (device tool): install kernels, build the kernel, GPU tests, benchmarks.
# Everything it writes lands in $OUT (fetched into benchmarks/results/).
set -o pipefail
OUT=${OUT:-/tmp/cgspn_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m pip install --no-deps -q .whl/kernels-*.whl || exit 1
# The GPU machine's transformers may be older than cgspn/__init__.py needs: expose only the
# propagation modules (cgspn.propagation*, cgspn.ops) through a minimal package on PYTHONPATH.
if ! python3 -c "import cgspn" 2>/dev/null; then
  MIN=/tmp/cgspn_min/cgspn; mkdir -p "$MIN"; : > "$MIN/__init__.py"
  for f in propagation.py propagation_reference.py ops; do ln -sfn "$PWD/cgspn/$f" "$MIN/$f"; done
  export PYTHONPATH=/tmp/cgspn_min; echo "using the minimal cgspn package (transformers too old here)"
fi
python3 kernels_src/build.py > "$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
tail -2 "$OUT/build.txt"
timeout 420 pytest -q -n 4 -p no:cacheprovider --import-mode=append tests/test_propagation_backends.py tests/test_kernel_hub.py \
  -rs > "$OUT/gpu_pytest.txt" 2>&1
tail -12 "$OUT/gpu_pytest.txt"
python3 benchmarks/bench_propagation.py --out "$OUT/propagation_h100.json" "$@" 2>&1 | tee "$OUT/bench.txt" | tail -30
# Profiles of the CUDA scan kernels at 2058 px (Nsight Compute), forward and backward.
for pass in fwd bwd; do
  extra=""; [ "$pass" = bwd ] && extra="--backward"
  timeout 120 ncu -k regex:propagate_$pass --launch-skip 1 --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    python3 benchmarks/profile_propagation.py --backend cuda --grid 147 $extra > "$OUT/ncu_${pass}_cuda.txt" 2>&1
  grep -E "DRAM Throughput|Duration|Achieved Occupancy|Registers Per|Block Size|Dynamic Shared" "$OUT/ncu_${pass}_cuda.txt" | head -8
done
