#!/usr/bin/env bash
# `make demo`: the user's path end to end on the tiny gpt-oss, on CPU, in minutes.
#   random HF checkpoint -> data prep (code + replay, chat for SFT) -> import to Megatron ->
#   continued pretraining on code -> SFT on harmony chats -> export (bf16 and MXFP4) -> round-trip
#   validation -> generation and a HumanEval-style evaluation -> plan the real 20b job.
# Everything lands in a directory of its own, $WORKSPACE/demo (WORKSPACE as in WORKSPACE.md, default
# ./workspace), marked as the demo's: a rerun replaces only that directory, and refuses to touch one
# that holds anything the demo did not make. DEMO_UNTIL=STAGE stops after that stage (a quick check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=${WORKSPACE:-$PWD/workspace}/demo
export WORKSPACE=$W  # the demo's models, data, checkpoints and results all go under its own directory
export PYTHONUNBUFFERED=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29571}
MARK=.made-by-kit-demo
MADE=(raw models data checkpoints results logs cache "$MARK")  # the only entries the demo creates in $W
T0=$SECONDS

stage() {  # stage NAME COMMAND...: run a stage, print what it did and how long it took
  local name=$1 t=$SECONDS log
  shift
  log="$W/logs/demo-$name.log"
  mkdir -p "$W/logs"
  printf '== %-28s ' "$name"
  if "$@" >"$log" 2>&1; then
    printf 'ok   %4ds  (log %s)\n' $((SECONDS - t)) "$log"
  else
    printf 'FAILED after %ds; last lines of %s:\n' $((SECONDS - t)) "$log"
    tail -n 30 "$log"
    exit 1
  fi
  if [ "${DEMO_UNTIL:-}" = "$name" ]; then
    echo "stopped after stage $name (DEMO_UNTIL)"
    exit 0
  fi
}

# Claim $W: new, empty, or the demo's own from an earlier run (the mark, and nothing beside what the
# demo makes). Anything else is the user's: stop and delete nothing.
if [ -e "$W" ] || [ -L "$W" ]; then
  if [ ! -d "$W" ] || [ -L "$W" ]; then
    echo "error: $W exists and is not a directory the demo made; set WORKSPACE to another place" >&2
    exit 2
  fi
  if [ -n "$(ls -A "$W")" ]; then
    if [ ! -f "$W/$MARK" ]; then
      echo "error: $W holds files the demo did not make (no $MARK): move them away or set WORKSPACE to another place; nothing was deleted" >&2
      exit 2
    fi
    for entry in "$W"/* "$W"/.[!.]*; do
      [ -e "$entry" ] || continue
      name=$(basename "$entry")
      case " ${MADE[*]} " in *" $name "*) ;; *)
        echo "error: $W/$name was not made by the demo: move it away or set WORKSPACE to another place; nothing was deleted" >&2
        exit 2 ;;
      esac
    done
    for name in "${MADE[@]}"; do rm -rf "${W:?}/$name"; done
  fi
fi
mkdir -p "$W/raw"
echo "made by scripts/demo.sh (make demo); the demo replaces this directory on its next run" >"$W/$MARK"

echo "gpt-oss kit demo: workspace $W"

# The embedded corpus: the kit's own Python sources (written for it) as code, its Markdown docs as
# general-text replay, and a few chat conversations made from the same sources for SFT.
"$PY" - "$W/raw" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
py = sorted(p for d in ("gptoss", "recipes", "conversion", "data_prep", "tests") for p in pathlib.Path(d).rglob("*.py"))
with open(out / "code.jsonl", "w") as f:
    for p in py:
        f.write(json.dumps({"content": p.read_text(), "lang": "Python", "max_stars_repo_path": str(p),
                            "max_stars_repo_licenses": ["Apache-2.0"]}) + "\n")
with open(out / "replay.jsonl", "w") as f:
    for md in sorted(pathlib.Path(".").glob("*.md")):
        for para in md.read_text().split("\n\n"):
            if len(para) > 80:
                f.write(json.dumps({"text": para}) + "\n")
with open(out / "chat.jsonl", "w") as f:
    for p in py[:40]:
        first = p.read_text().split('"""')[1].strip().splitlines()[0] if '"""' in p.read_text() else p.name
        f.write(json.dumps({"messages": [
            {"role": "user", "content": f"What is {p} for?"},
            {"role": "assistant", "content": first, "thinking": f"The docstring of {p.name} says so."}]}) + "\n")
print(f"{len(py)} code files")
PY

stage random-checkpoint "$PY" -m conversion random --size tiny --out "$W/models/gpt-oss-tiny/hf"
# as the README's continued-pretraining path: HumanEval removed, secrets redacted
stage data-code "$PY" -m data_prep pretrain "$W/raw/code.jsonl" -o "$W/data/the-stack" -j 2 --decontaminate humaneval --redact-pii
stage data-replay "$PY" -m data_prep pretrain "$W/raw/replay.jsonl" -o "$W/data/replay" --preset text --text-key text
stage data-sft "$PY" -m data_prep sft "$W/raw/chat.jsonl" -o "$W/data/sft" --seq-length 128 --val-fraction 0.25
stage import "$PY" -m conversion import --hf "$W/models/gpt-oss-tiny/hf" --out "$W/models/gpt-oss-tiny/megatron"
stage cpt-code "$PY" -m recipes run gpt_oss_tiny_cpt_code train.train_iters=10
CPT=$W/checkpoints/gpt-oss-tiny-cpt-code
stage sft "$PY" -m recipes run gpt_oss_tiny_sft train.train_iters=4 checkpoint.pretrained_checkpoint="$CPT"
stage export-bf16 "$PY" -m conversion export --megatron "$CPT" --out "$W/models/gpt-oss-tiny-cpt-code/hf"
stage export-mxfp4 "$PY" -m conversion export --megatron "$CPT" --out "$W/models/gpt-oss-tiny-cpt-code/hf-mxfp4" --dtype mxfp4
stage validate-export "$PY" -m conversion validate --hf "$W/models/gpt-oss-tiny-cpt-code/hf" --megatron "$CPT"
stage generate-code "$PY" -m inference generate "$W/models/gpt-oss-tiny-cpt-code/hf" --prompt 'def add(a, b):' --max-new-tokens 24
stage generate-chat "$PY" -m inference generate "$W/checkpoints/gpt-oss-tiny-sft" --mode chat --prompt 'What is recipes/run.py for?' --max-new-tokens 24
stage eval-code "$PY" -m inference eval code "$W/models/gpt-oss-tiny-cpt-code/hf" --n 1 --max-new-tokens 32
stage roundtrip-release "$PY" -m conversion roundtrip --hf "$W/models/gpt-oss-tiny/hf" --work "$W/cache/roundtrip"
stage plan-20b "$PY" -m recipes plan gpt_oss_20b_cpt_code --tokens 200e9

echo
echo "continued pretraining on code (from $W/results/gpt-oss-tiny-cpt-code/metrics.jsonl):"
"$PY" - "$W/results/gpt-oss-tiny-cpt-code/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
print(f"  steps {rows[0]['step']}..{rows[-1]['step']}: lm loss {rows[0]['lm loss']:.3f} -> {rows[-1]['lm loss']:.3f}")
PY
tail -n 3 "$W/logs/demo-validate-export.log" | sed 's/^/  /'
echo "generated from the continued-pretrained model (random init + 10 steps: expect noise):"
tail -n 2 "$W/logs/demo-generate-code.log" | sed 's/^/  /'
tail -n 2 "$W/logs/demo-eval-code.log" | sed 's/^/  /'
tail -n 4 "$W/logs/demo-plan-20b.log" | sed 's/^/  /'
echo
echo "where everything went (WORKSPACE.md explains the layout):"
for d in models/gpt-oss-tiny/hf models/gpt-oss-tiny/megatron data/the-stack data/replay data/sft \
         checkpoints/gpt-oss-tiny-cpt-code checkpoints/gpt-oss-tiny-sft models/gpt-oss-tiny-cpt-code/hf models/gpt-oss-tiny-cpt-code/hf-mxfp4 \
         results/gpt-oss-tiny-cpt-code logs; do
  printf '  %-45s %s\n' "$W/$d" "$(du -sh "$W/$d" | cut -f1)"
done
echo "demo finished in $((SECONDS - T0)) s"
