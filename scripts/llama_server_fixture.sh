#!/usr/bin/env bash
# Real llama-server fixture for the `real_server` tests (issue 19).
#
#   bash scripts/llama_server_fixture.sh [--build-only]
#
# 1. Builds llama.cpp's `llama-server` from the source that the PyPI sdist of llama-cpp-python vendors
#    (vendor/llama.cpp), into a cache folder keyed by the sdist version. A present binary is reused, so
#    a machine pays the build (about 9 minutes on 2 cores) once.
# 2. Writes the project's tiny random Qwen2.5-Omni thinker and converts it to GGUF + mmproj with the
#    vendored convert_hf_to_gguf.py, run in its own venv with the converter's pins but our torch.
#
# Prints KEY=VALUE lines (LLAMA_SERVER, TINY_GGUF, TINY_MMPROJ) on stdout; everything else goes to
# stderr. Environment: ACESTEP_LLAMA_CACHE (cache root), LLAMA_CPP_PYTHON_VERSION (sdist version),
# PYTHON (the project's python, default .venv/bin/python), TORCH_VERSION (default: the project's).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE_ROOT=${ACESTEP_LLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/acestep-llama-server}
CACHE=$CACHE_ROOT/$VERSION
PY=${PYTHON:-$REPO/.venv/bin/python}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
log() { echo "[llama-server fixture] $*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one build per machine, even with two CI runs at once

SRC=$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  log "downloading the llama-cpp-python $VERSION sdist"
  rm -rf "$CACHE/src.tmp" && mkdir -p "$CACHE/src.tmp"
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/src.tmp" >&2
  tar -xzf "$CACHE/src.tmp/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE/src.tmp"
  rm -f "$CACHE/src.tmp/llama_cpp_python-$VERSION.tar.gz"
  rm -rf "$CACHE/src" && mv "$CACHE/src.tmp" "$CACHE/src"
fi

SERVER=$CACHE/bin/llama-server
if ! "$SERVER" --version >/dev/null 2>&1; then
  for tool in cmake c++; do
    command -v "$tool" >/dev/null || { log "cannot build llama-server: '$tool' not found"; exit 3; }
  done
  log "building llama-server $VERSION with $JOBS jobs (about 9 minutes on 2 cores)"
  start=$(date +%s)
  cmake -S "$SRC" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DGGML_NATIVE=ON >&2
  nice cmake --build "$CACHE/build" --target llama-server -j "$JOBS" >&2
  mkdir -p "$CACHE/bin"
  cp "$CACHE/build/bin/llama-server" "$SERVER.tmp" && mv "$SERVER.tmp" "$SERVER"
  log "built in $(( $(date +%s) - start )) s: $SERVER"
fi
[ "${1:-}" = "--build-only" ] && { echo "LLAMA_SERVER=$SERVER"; exit 0; }
