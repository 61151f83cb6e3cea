#!/usr/bin/env bash
# Real llama-server fixture for the `real_server` tests (issue 19).
#
#   bash scripts/llama_server_fixture.sh [--build-only | --print]
#
# 1. Builds llama.cpp's `llama-server` from the source that the PyPI sdist of llama-cpp-python vendors
#    (vendor/llama.cpp), into a cache folder keyed by the sdist version. A present binary is reused, so
#    a machine pays the build (about 9 minutes on 2 cores) once.
# 2. Writes the project's tiny random Qwen2.5-Omni thinker and converts it to GGUF + mmproj with the
#    vendored convert_hf_to_gguf.py, run in its own venv with the converter's pins but our torch.
#
# Prints KEY=VALUE lines on stdout (LLAMA_SERVER; TAGS_GGUF, a model that answers "rock, piano, upbeat";
# LOOP_GGUF, one that says "la " until the token limit; TAGS_MMPROJ, LOOP_MMPROJ their projectors);
# everything else goes to stderr. Exit code 3: no compiler (the tests skip with that reason).
# --print only prints the paths when everything is there, else exits 4 (what the tests call).
# Environment: ACESTEP_LLAMA_CACHE (cache root), LLAMA_CPP_PYTHON_VERSION (sdist version), JOBS,
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
SERVER=$CACHE/bin/llama-server
# The tiny models, keyed by the code that writes and converts them.
KEY=$(cat acestep/captioning/tiny_omni.py scripts/llama_server_convert.py | sha256sum | cut -c1-12)
MODELS=$CACHE/models-$KEY
print_paths() {
  echo "LLAMA_SERVER=$SERVER"
  echo "TAGS_GGUF=$MODELS/tags/tiny-omni.gguf"
  echo "LOOP_GGUF=$MODELS/loop/tiny-omni.gguf"
  echo "TAGS_MMPROJ=$MODELS/tags/mmproj-tiny-omni.gguf"
  echo "LOOP_MMPROJ=$MODELS/loop/mmproj-tiny-omni.gguf"
}
if [ "${1:-}" = "--print" ]; then
  [ -x "$SERVER" ] && [ -f "$MODELS/done" ] || exit 4
  print_paths
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one build per machine, even with two CI runs at once

if ! "$SERVER" --version >/dev/null 2>&1; then
  for tool in cmake c++; do
    command -v "$tool" >/dev/null || { log "cannot build llama-server: '$tool' not found"; exit 3; }
  done
fi
SRC=$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  log "downloading the llama-cpp-python $VERSION sdist"
  rm -rf "$CACHE/src.tmp" && mkdir -p "$CACHE/src.tmp"
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/src.tmp" >&2
  tar -xzf "$CACHE/src.tmp/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE/src.tmp"
  rm -f "$CACHE/src.tmp/llama_cpp_python-$VERSION.tar.gz"
  rm -rf "$CACHE/src" && mv "$CACHE/src.tmp" "$CACHE/src"
fi

if ! "$SERVER" --version >/dev/null 2>&1; then
  log "building llama-server $VERSION with $JOBS jobs (9-20 minutes on 2 cores, once per machine)"
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

# The converter's venv: its pinned requirements, but torch stays the project's version (CPU build).
CONVERT_VENV=$CACHE/convert-venv
if ! "$CONVERT_VENV/bin/python" -c "import transformers, torch, numpy, sentencepiece" 2>/dev/null; then
  log "installing the converter's requirements into $CONVERT_VENV (torch kept at the project's version)"
  TORCH_VERSION=${TORCH_VERSION:-$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")}
  rm -rf "$CONVERT_VENV"
  python3 -m venv "$CONVERT_VENV"
  echo "torch==$TORCH_VERSION" > "$CACHE/torch-constraint.txt"
  # The converter's files pin another torch and add the PyTorch index; drop both lines, keep the rest.
  grep -hvE '^(-r|--extra-index-url|torch)' "$SRC/requirements/requirements-convert_hf_to_gguf.txt" \
    "$SRC/requirements/requirements-convert_legacy_llama.txt" > "$CACHE/convert-requirements.txt"
  "$CONVERT_VENV/bin/python" -m pip install -q -c "$CACHE/torch-constraint.txt" \
    -r "$CACHE/convert-requirements.txt" "torch==$TORCH_VERSION" >&2
fi

if [ ! -f "$MODELS/done" ]; then
  log "writing and converting the tiny Qwen2.5-Omni models into $MODELS"
  rm -rf "$MODELS.tmp" && mkdir -p "$MODELS.tmp"
  PYTHONPATH=$REPO "$PY" -m acestep.captioning.tiny_omni "$MODELS.tmp/hf-tags" --full_omni \
    --answer "rock, piano, upbeat" >&2
  PYTHONPATH=$REPO "$PY" -m acestep.captioning.tiny_omni "$MODELS.tmp/hf-loop" --full_omni \
    --answer "la " --repeat >&2
  for name in tags loop; do
    "$CONVERT_VENV/bin/python" scripts/llama_server_convert.py "$SRC" "$MODELS.tmp/hf-$name" \
      "$MODELS.tmp/$name" >&2
  done
  touch "$MODELS.tmp/done"
  rm -rf "$MODELS" && mv "$MODELS.tmp" "$MODELS"
fi
log "ready: $SERVER and the tiny models in $MODELS"
print_paths
