#!/usr/bin/env bash
# The C++ library in CI: configure and build it with CMake against the torch
# of $PYTHON, run its tests (ctest), install it to a temporary prefix, then
# build and run examples/cpp against the installed CMake package.
#
# Run after the Python package is installed (pip install --no-build-isolation
# -e .): the TorchScript test scripts fastlayernorm.LayerNorm in Python.
#
# Environment:
#   PYTHON                       interpreter with torch (default: python)
#   FASTLAYERNORM_CPP_BUILD_DIR  build directory (default: build/cpp)
#   FASTLAYERNORM_CPP_CUDA       1|0: force the CUDA kernels on or off
#                                (default: on when CMake finds nvcc)
#   CUDAARCHS                    GPU architectures (default: 80-real;90-real)
#   FASTLAYERNORM_CPP_JOBS       parallel jobs (default: 2)
#   FASTLAYERNORM_CMAKE_ARGS     extra arguments for the configure step
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
BUILD_DIR="${FASTLAYERNORM_CPP_BUILD_DIR:-$ROOT/build/cpp}"
JOBS="${FASTLAYERNORM_CPP_JOBS:-2}"

PYTHON_EXE="$("$PYTHON" -c 'import sys; print(sys.executable)')"
TORCH_PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

cmake_args=(
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX"
  -DPython3_EXECUTABLE="$PYTHON_EXE"
)
if command -v ninja >/dev/null 2>&1; then
  cmake_args+=(-G Ninja)
fi
case "${FASTLAYERNORM_CPP_CUDA:-}" in
  1|on|ON|true) cmake_args+=(-DFASTLAYERNORM_WITH_CUDA=ON) ;;
  0|off|OFF|false) cmake_args+=(-DFASTLAYERNORM_WITH_CUDA=OFF) ;;
esac
# shellcheck disable=SC2206
cmake_args+=(${FASTLAYERNORM_CMAKE_ARGS:-})

step() { echo "==> [cpp $(date +%T)] $*"; }
start=$SECONDS

step "configure $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" "${cmake_args[@]}"

step "build"
cmake --build "$BUILD_DIR" --parallel "$JOBS"

step "test"
(cd "$BUILD_DIR" && ctest --output-on-failure --parallel "$JOBS")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastlayernorm-cpp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

step "install to $WORK/prefix"
cmake --install "$BUILD_DIR" --prefix "$WORK/prefix"

step "example against the installed package"
example_args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$WORK/prefix;$TORCH_PREFIX")
if command -v ninja >/dev/null 2>&1; then
  example_args+=(-G Ninja)
fi
cmake -S "$ROOT/examples/cpp" -B "$WORK/example" "${example_args[@]}"
cmake --build "$WORK/example" --parallel "$JOBS"
"$WORK/example/layer_norm_example"

step "done in $((SECONDS - start)) s"
