#!/usr/bin/env bash
# Build llama-cpp-python from source for the machine it will run on and install it into a
# Python environment, reusing a wheel only when it was built the same way.
#
#   deploy/build-llama-cpp.sh PYTHON          build (or reuse) and install into PYTHON's env
#   deploy/build-llama-cpp.sh --cmake-args    print the CMake arguments it would use
#   deploy/build-llama-cpp.sh --key PYTHON     print the build key (see below)
#
# LLAMA_CPP_TARGET picks the CPU code:
#   native    (default; `make run` and `make test`) llama.cpp's -march=native for the build
#             host, minus AMX: some machines advertise AMX (amx_tile/amx_int8 in /proc/cpuinfo)
#             but fault (general protection, `ldtilecfg`) when ggml's AMX kernels run, killing
#             the worker on its first multi-token prompt. AVX-512, VNNI and the rest of what
#             the CPU has stay in.
#   portable  for images built on one machine and run on others: no -march=native, ggml's
#             x86-64-v3 baseline (AVX, AVX2, FMA, F16C, BMI2; any x86 server since ~2015).
# CMAKE_ARGS, if set, is appended (e.g. -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90).
#
# pip's own wheel cache is keyed by the source alone, so a wheel built with other flags (or on
# another CPU) would be reused silently: this script never uses it. Its wheels live in
# TOKENQ_WHEEL_CACHE (default ~/.cache/tokenq/wheels), one folder per build key: the version,
# the CMake arguments, the compilers, and for native builds the CPU's model and flags.
set -euo pipefail

VERSION=${LLAMA_CPP_VERSION:-0.3.36}
TARGET=${LLAMA_CPP_TARGET:-native}
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

case "$TARGET" in
  native) args="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'" ;;
  portable) args="-DGGML_NATIVE=OFF" ;;
  *) echo "LLAMA_CPP_TARGET must be native or portable, not '$TARGET'" >&2; exit 2 ;;
esac
# tokenq reads text only: the multimodal library (mtmd) is not built.
args="$args -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}"

if [ "${1:-}" = "--cmake-args" ]; then
  echo "$args"
  exit 0
fi
print_key=false
if [ "${1:-}" = "--key" ]; then
  print_key=true
  shift
fi
PY=${1:?usage: build-llama-cpp.sh [--key] PYTHON | --cmake-args}

cpu=""
if [ "$TARGET" = native ] && [ -r /proc/cpuinfo ]; then
  cpu=$(grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo)
fi
key=$(
  {
    echo "$VERSION" "$TARGET" "$args"
    cc --version 2>/dev/null | head -n1
    c++ --version 2>/dev/null | head -n1
    "$PY" -c 'import platform; print(platform.machine(), platform.libc_ver())'
    echo "$cpu"
  } | sha256sum | cut -c1-16
)
if $print_key; then
  echo "$key"
  exit 0
fi
cache=${TOKENQ_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenq/wheels}/llama-cpp-python-$VERSION-$key
stamp=$("$PY" -c 'import sys; print(sys.prefix)')/.llama-cpp-build

if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && "$PY" -c 'import llama_cpp' 2>/dev/null; then
  exit 0  # this environment already has this build
fi
if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION ($TARGET): $args"
  mkdir -p "$cache.tmp"
  CMAKE_ARGS="$args" "$PY" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$cache.tmp" "llama-cpp-python==$VERSION"
  rm -rf "$cache"
  mv "$cache.tmp" "$cache"
fi
"$PY" -m pip install -q --no-deps --force-reinstall --no-cache-dir "$cache"/llama_cpp_python-*.whl
echo "$key" >"$stamp"
