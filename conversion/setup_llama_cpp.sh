#!/usr/bin/env bash
# llama.cpp's own HF -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py),
# an outside check that the kit's MXFP4 exports load where gpt-oss is served with llama.cpp or
# Ollama (tests/test_qat.py). Taken from the llama-cpp-python sdist on PyPI, which vendors
# llama.cpp (PyPI is reachable where GitHub is not); pinned by version and sha256. The converter
# runs with the kit's torch and transformers; no C++ is built. Idempotent (a stamp file records a
# finished install); the tests that need it skip with this command as the fix when it is missing.
# Usage: bash conversion/setup_llama_cpp.sh [DIR]   (default: build/llama.cpp, ignored by git)
set -euo pipefail
DEST=$(realpath -m "${1:-$(dirname "$0")/../build/llama.cpp}")  # a DIR given is the caller's, not the checkout's
VERSION=0.3.36
URL=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$VERSION.tar.gz
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
STAMP="$DEST/.kit-llama-cpp-python-$VERSION"
[ -f "$STAMP" ] && { echo "llama.cpp's converter (llama-cpp-python $VERSION) already in $DEST"; exit 0; }

if [ -e "$DEST" ]; then
  echo "error: $DEST exists and is not an install of this script (no $(basename "$STAMP")): remove it or pass another DIR" >&2
  exit 2
fi
mkdir -p "$(dirname "$DEST")"
tmp=$(mktemp -d "$(dirname "$DEST")/.llama.cpp.tmp-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "downloading llama-cpp-python $VERSION's sdist (77 MB) for llama.cpp's converter"
curl -fsSL --retry 3 -o "$tmp/sdist.tar.gz" "$URL"
echo "$SHA256  $tmp/sdist.tar.gz" | sha256sum -c --quiet -
src=llama_cpp_python-$VERSION/vendor/llama.cpp
tar -xzf "$tmp/sdist.tar.gz" -C "$tmp" "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$src/LICENSE"
rm "$tmp/sdist.tar.gz"
touch "$tmp/$src/.kit-llama-cpp-python-$VERSION"
mv "$tmp/$src" "$DEST"
echo "llama.cpp's converter -> $DEST"
