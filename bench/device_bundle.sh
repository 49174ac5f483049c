#!/usr/bin/env bash
# The wheels the GPU check needs on a bare GPU host (bench/device_host.txt: its packages; no
# network there) that the host lacks or has in a version the kit cannot use, for CPython 3.12
# manylinux x86-64, as pinned by bench/device_bundle.txt (versions and sha256 hashes). Downloads
# them into build/device-bundle (ignored) and fails if the folder passes 60 MiB, the host's
# allowance being 64 MiB per command. bench/device_check.sh installs them there.
#
#   bash bench/device_bundle.sh            # build/device-bundle from the lock
#   bash bench/device_bundle.sh --relock   # re-pin the lock's names to this venv's versions
#
# Left out on purpose (the check does not import them; each is an optional import of what it runs):
# wandb (29 MB; megatron.core.timers tries it), botocore (tensorboard's S3 stub), zstandard (torch
# looks for it), bpe-openai (41 MB: only its 1.7 MB o200k file is copied in). tests/test_device_bundle.py checks that
# the bundle plus the host import everything bench/gpu_check.py runs.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=bench/device_bundle.txt
OUT=${BUNDLE_DIR:-build/device-bundle}
LIMIT_MIB=60
PY=${PY:-.venv/bin/python}
# the one pin that PyPI has as a source archive only (pure Python): built into a wheel here
SDIST_ONLY="antlr4-python3-runtime"
PLATFORM=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)

download() {  # download DIR REQUIREMENTS-FILE: the wheels (and the sdist-only pins' archives)
    local dir=$1 reqs=$2
    grep -vE "^($SDIST_ONLY)==" "$reqs" > "$dir/.binary.txt" || true
    grep -E "^($SDIST_ONLY)==" "$reqs" > "$dir/.sdist.txt" || true
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$dir" -r "$dir/.binary.txt"
    if [[ -s $dir/.sdist.txt ]]; then
        "$PY" -m pip download --quiet --no-deps --no-binary=:all: -d "$dir" -r "$dir/.sdist.txt"
    fi
}

if [[ ${1:-} == --relock ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    names=$(grep -vE '^\s*(#|$)' "$LOCK" | sed 's/==.*//')
    for n in $names; do
        echo "$n==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$n")"
    done > "$tmp/reqs.txt"
    download "$tmp" "$tmp/reqs.txt"
    # name==version --hash=... per pin, the hash of the file pip fetched (wheels spell the name with
    # "_", sdists as published: compare normalized)
    "$PY" - "$tmp" "$tmp/reqs.txt" "$LOCK" > "$LOCK.new" <<'PYEOF'
import hashlib, re, sys
from pathlib import Path
tmp, reqs, lock = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
print("\n".join(ln for ln in lock.read_text().splitlines() if ln.startswith("#")))
for req in reqs.read_text().split():
    name, version = req.split("==")
    files = [f for f in tmp.iterdir() if norm(f.name).startswith(norm(f"{name}-{version}") + "_")]
    if len(files) != 1:
        sys.exit(f"no single file downloaded for {req}: {files}")
    print(f"{req} --hash=sha256:{hashlib.sha256(files[0].read_bytes()).hexdigest()}")
PYEOF
    mv "$LOCK.new" "$LOCK"
    echo "re-pinned $(grep -vcE '^\s*(#|$)' "$LOCK") packages in $LOCK"
    exit 0
fi

# Only folders this script made are replaced: it marks them (a BUNDLE_DIR of the user's is refused).
MARK=.kit-device-bundle
for d in "$OUT" "$OUT.partial"; do
    if [[ -e $d && ! -e $d/$MARK ]]; then
        echo "device bundle: $d exists and was not made by bench/device_bundle.sh; move it or set BUNDLE_DIR elsewhere" >&2
        exit 1
    fi
done
tmp="$OUT.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
touch "$tmp/$MARK"
grep -vE '^\s*(#|$)' "$LOCK" > "$tmp/.lock.txt"
# --require-hashes: every file is the one the lock names, byte for byte
grep -vE "^($SDIST_ONLY)==" "$tmp/.lock.txt" > "$tmp/.binary.txt" || true
grep -E "^($SDIST_ONLY)==" "$tmp/.lock.txt" > "$tmp/.sdist.txt" || true
"$PY" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: "${PLATFORM[@]}" -d "$tmp" -r "$tmp/.binary.txt"
if [[ -s $tmp/.sdist.txt ]]; then
    "$PY" -m pip download --quiet --no-deps --require-hashes --no-binary=:all: -d "$tmp/sdist" -r "$tmp/.sdist.txt"
    "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$tmp" "$tmp"/sdist/*
    rm -rf "$tmp/sdist"
fi
rm -f "$tmp"/.*.txt
# the tokenizer's offline file without its 41 MB wheel (gptoss/tokenizer.py: $GPTOSS_KIT_O200K)
cp "$("$PY" -c "from gptoss.tokenizer import o200k_gz; print(o200k_gz())")" "$tmp/o200k_base.tiktoken.gz"
n=$(ls "$tmp"/*.whl | wc -l)
want=$(grep -vcE '^\s*(#|$)' "$LOCK")
[[ $n -eq $want ]] || { echo "device bundle: $n wheels for $want pins in $LOCK" >&2; exit 1; }
mib=$(du -sm "$tmp" | cut -f1)
if (( $(du -sb "$tmp" | cut -f1) > LIMIT_MIB * 1024 * 1024 )); then
    echo "device bundle: ${mib} MiB is over the ${LIMIT_MIB} MiB limit (the host takes 64 MiB per command); drop a pin from $LOCK" >&2
    exit 1
fi
rm -rf "$OUT"
mv "$tmp" "$OUT"
echo "device bundle: $n wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
