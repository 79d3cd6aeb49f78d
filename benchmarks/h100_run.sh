#!/usr/bin/env bash
# One call on the lent GPU machine: build, CUDA tests, compute-sanitizer,
# benchmark — whichever stages are named (default: all). Logs go to $OUT.
#   bash benchmarks/h100_run.sh build test sanitize cpp tune bench
#   bash benchmarks/h100_run.sh prebuilt test   (extension compiled elsewhere)
# Wheels missing on that machine (expecttest, liger-kernel, peft) travel in
# .whl/ (see docs/development.md).
set -u
OUT=${OUT:-/tmp/fastlayernorm-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stages=${*:-build test sanitize bench}
summary="$OUT/${SUMMARY:-summary}.txt"  # SUMMARY: a name per invocation run side by side
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  # Once per machine (several invocations may run side by side).
  [ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && touch /tmp/site/.installed; }
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
  --format=csv > "$OUT/gpu.txt" 2>&1
note "gpu: $(tail -1 "$OUT/gpu.txt")"

# The lent machine's Python was built with its own GCC (/opt/gcc), which
# links a private copy of libstdc++ into extensions; torch uses the system one,
# and two copies in one process crash on the first formatted error message.
# Build with the system compiler, as torch itself was.
if [ -x /usr/bin/g++ ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/gcc -shared" LDCXXSHARED="/usr/bin/g++ -shared"
fi

for stage in $stages; do
  start=$(date +%s)
  case $stage in
    build)
      MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="9.0" FASTLAYERNORM_PTXAS_VERBOSE=1 \
        python3 -m pip install -v --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
      rc=$?
      python3 benchmarks/ptxas_report.py "$OUT/build.log" > "$OUT/ptxas.txt" 2>&1
      note "build rc=$rc in $(( $(date +%s) - start ))s; cuda_built=$(python3 -c 'import fastlayernorm; print(fastlayernorm.cuda_built())' 2>&1 | tail -1)"
      # An error message with numbers in it must raise, not crash.
      note "error path: $(python3 -c 'import torch, fastlayernorm
try:
    torch.ops.fastlayernorm.layer_norm_fwd(torch.randn(4, 8), [16], None, None, 1e-5)
except RuntimeError as e:
    print("raised:", str(e).splitlines()[0][:80])' 2>&1 | tail -1)"
      [ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
      ;;
    prebuilt)
      # The extension compiled on another machine (same torch, nvcc, sm_90:
      # python/fastlayernorm/_C.abi3.so from `setup.py build_ext --inplace`),
      # which saves the build's device time.
      export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
      note "prebuilt: cuda_built=$(python3 -c 'import fastlayernorm; print(fastlayernorm.cuda_built())' 2>&1 | tail -1)"
      ;;
    test)
      python3 -m pytest tests -q -m "cuda" -p no:cacheprovider --runslow -n 8 \
        > "$OUT/pytest_cuda.log" 2>&1
      note "pytest cuda: $(tail -1 "$OUT/pytest_cuda.log") ($(( $(date +%s) - start ))s)"
      ;;
    testall)
      python3 -m pytest tests -q -p no:cacheprovider > "$OUT/pytest_all.log" 2>&1
      note "pytest all: $(tail -1 "$OUT/pytest_all.log") ($(( $(date +%s) - start ))s)"
      ;;
    sanitize)
      for tool in memcheck racecheck; do
        compute-sanitizer --tool $tool --error-exitcode 9 \
          python3 benchmarks/sanitize_shapes.py > "$OUT/sanitizer_$tool.log" 2>&1
        note "compute-sanitizer $tool rc=$? : $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1)"
      done
      # Every tensor its own cudaMalloc (no caching allocator): a read past
      # a tensor's end is then outside any allocation, which memcheck reports.
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python3 benchmarks/sanitize_shapes.py > "$OUT/sanitizer_memcheck_nocache.log" 2>&1
      note "compute-sanitizer memcheck (no caching allocator) rc=$? : $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer_memcheck_nocache.log" | tail -1)"
      ;;
    tune-build|tune)
      # Kernel-configuration sweep (benchmarks/tune_kernels.py), one per
      # argument set of TUNE_SETS ('|'-separated; default: TUNE_ARGS), each in
      # its own build directory. tune-build compiles only (CPU: can overlap
      # the tests).
      IFS='|' read -r -a sets <<< "${TUNE_SETS:-${TUNE_ARGS:-}}"
      [ ${#sets[@]} -gt 0 ] || sets=("")
      for i in "${!sets[@]}"; do
        args=(${sets[$i]} --build-dir "/tmp/fastlayernorm-tune-$i")
        if [ "$stage" = tune-build ]; then
          MAX_JOBS=16 python3 benchmarks/tune_kernels.py --build-only "${args[@]}" \
            > "$OUT/tune_build$i.log" 2>&1
          note "tune-build $i rc=$? ($(( $(date +%s) - start ))s)"
        else
          MAX_JOBS=16 timeout ${TUNE_TIMEOUT:-420} python3 benchmarks/tune_kernels.py \
            --out "$OUT/tune$i.json" "${args[@]}" > "$OUT/tune$i.log" 2>&1
          note "tune $i rc=$? ($(( $(date +%s) - start ))s): $(grep -c '%' "$OUT/tune$i.log") lines"
        fi
      done
      ;;
    ncu)
      # Nsight Compute: the forward kernels of fastlayernorm and its peers.
      ncu --profile-from-start off --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats python3 benchmarks/ncu_compare.py ${NCU_ARGS:-} \
        > "$OUT/ncu.txt" 2>&1
      note "ncu rc=$? ($(( $(date +%s) - start ))s)"
      ;;
    cpp)
      # The LibTorch build and its ctest suite (CUDA cases included here).
      PYTHON=python3 CUDAARCHS=90-real FASTLAYERNORM_CPP_JOBS=16 \
        FASTLAYERNORM_CPP_BUILD_DIR=/tmp/fastlayernorm-cpp bash .ci/cpp.sh > "$OUT/cpp.log" 2>&1
      note "cpp rc=$? : $(grep -E 'tests passed|tests failed' "$OUT/cpp.log" | tail -1) ($(( $(date +%s) - start ))s)"
      ;;
    bench)
      python3 -m benchmarks.bench_layernorm --out h100 > "$OUT/bench.log" 2>&1
      note "bench rc=$? ($(( $(date +%s) - start ))s)"
      cp benchmarks/results/* "$OUT/" 2>/dev/null
      ;;
    *)
      note "unknown stage $stage"
      ;;
  esac
done
echo "==== summary"
cat "$summary"
