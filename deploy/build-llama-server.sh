#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the llama.cpp that llama-cpp-python vendors, with
# the CPU flags of our llama-cpp-python build, for side-by-side benchmarks
# (tests/benchmarks/bench_serving.py). Not used by `make run` or `make test`.
#
#   deploy/build-llama-server.sh PYTHON    build (or reuse) and print the binary's path
#
# The flags come from `build-llama-cpp.sh --cmake-args` (LLAMA_CPP_TARGET and CMAKE_ARGS work
# the same way: native minus AMX by default), and the cache folder is keyed by its build key:
# TOKENQ_SERVER_CACHE (default ~/.cache/tokenq)/llama-server-<version>-<key>/llama-server.
# Static libraries, so the binary stands alone; no curl, no OpenSSL, no web UI (the UI would
# be downloaded from Hugging Face or built with npm). The source is llama-cpp-python's sdist
# from PyPI (pip download), whose vendor/llama.cpp is the exact tree the wheel compiles.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
PY=${1:?usage: build-llama-server.sh PYTHON}
JOBS=${JOBS:-2}

key=$(bash "$here/build-llama-cpp.sh" --key "$PY")
cache=${TOKENQ_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenq}/llama-server-$VERSION-$key
if [ -x "$cache/llama-server" ]; then
  echo "$cache/llama-server"
  exit 0
fi

# The same arguments as the wheel (quoted flags inside: let the shell split them).
eval "wheel_args=($(bash "$here/build-llama-cpp.sh" --cmake-args))"
server_args=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
)

command -v cmake >/dev/null || "$PY" -m pip install -q cmake
cmake_bin=$(command -v cmake || echo "$("$PY" -c 'import sys; print(sys.prefix)')/bin/cmake")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "downloading llama-cpp-python $VERSION (source)" >&2
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION" >&2
tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src=$work/llama_cpp_python-$VERSION/vendor/llama.cpp

echo "building llama-server ($VERSION, key $key): ${wheel_args[*]} ${server_args[*]}" >&2
start=$SECONDS
"$cmake_bin" -S "$src" -B "$work/build" "${wheel_args[@]}" "${server_args[@]}" >&2
"$cmake_bin" --build "$work/build" --target llama-server -j "$JOBS" >&2
echo "built in $((SECONDS - start)) s" >&2

mkdir -p "$cache.tmp"
cp "$work/build/bin/llama-server" "$cache.tmp/"
printf '%s\n' "${wheel_args[@]}" "${server_args[@]}" >"$cache.tmp/cmake-args"
rm -rf "$cache"
mv "$cache.tmp" "$cache"
echo "$cache/llama-server"
