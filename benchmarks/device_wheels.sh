#!/bin/bash
# The wheels benchmarks/run_device.sh installs on the GPU machine: what its image lacks (transformers newer than
# its 5.17, kernels, datasets, evaluate, open_clip_torch and their missing needs; Python 3.12, x86-64) into .whl/,
# and the cgspn wheel into .whl/cgspn/. The versions are the ones CPU CI resolves. .whl/ is git-ignored; name it
# in the device run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformers==5.24.0 kernels==0.18.3 datasets==5.2.0 evaluate==0.4.6 open_clip_torch==3.3.0 \
  dill==0.4.1 multiprocess==0.70.19 ftfy==6.3.1 wcwidth==0.9.4 parameterized==0.9.0
python3 -m pip wheel -q --no-deps -w .whl/cgspn .
du -sh .whl
