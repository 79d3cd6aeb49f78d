#!/usr/bin/env bash
# Builds and runs forward_variants.cu (see its header). The binary needs no
# GPU to build, so it can be compiled here and carried to a GPU machine:
#   bash benchmarks/experiments/run_forward_variants.sh build   # -> build/forward_variants
#   bash benchmarks/experiments/run_forward_variants.sh run     # build (if needed) and run
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/forward_variants
if [ "${1:-run}" = build ] || [ ! -x "$bin" ]; then
  mkdir -p build
  inc=$(python3 -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))" 2>/dev/null)
  pyinc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  nvcc -O3 -std=c++17 -arch=sm_90a $inc -I"$pyinc" -Icsrc -Xptxas -v \
    benchmarks/experiments/forward_variants.cu -o "$bin"
fi
[ "${1:-run}" = build ] || "$bin"
