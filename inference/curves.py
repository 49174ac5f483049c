"""Evaluation over a training run: every saved checkpoint of a Megatron run directory, appended to
the run's curve, so that `report` can plot pass@1 and validation loss against tokens seen (does
continued pretraining help the code, and what does it forget of the replay text?).

    python -m inference eval code $WORKSPACE/checkpoints/gpt-oss-20b-cpt-code --iterations all --problems humaneval
    python -m inference eval loss $WORKSPACE/checkpoints/gpt-oss-20b-cpt-code --iterations new --data code=... --data replay=...

`--iterations all` evaluates every iteration, `new` only those the curve does not have yet (a job
rerun after a pre-emption, or a cron job during training, continues where it stopped), or a list
`1000,2000`. Per iteration the full result goes to `$WORKSPACE/results/<label>/iterations/
eval_<kind>_iter<N>.json` and one line to `$WORKSPACE/results/<label>/curve.jsonl`:
    {"kind": "code"|"loss", "iteration": N, "tokens": T, "pass_at_k": {...} | "loss": {dataset: loss}, "file": ...}
Tokens seen = iteration x global batch size x sequence length, from the checkpoint's
run_config.yaml (None when the checkpoint does not record them: then the x axis is iterations).
A line is appended (flushed and fsynced) only after its result file is complete; a torn last line
from a crash is ignored on reading.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ITER_DIR = re.compile(r"iter_(\d{7})$")


def run_iterations(ckpt: str | os.PathLike) -> list[int]:
    """Iterations of a Megatron run directory that hold a complete checkpoint."""
    p = Path(ckpt)
    out = []
    for d in p.glob("iter_*"):
        m = ITER_DIR.search(d.name)
        if m and (d / "metadata.json").is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def select(ckpt: str | os.PathLike, spec: str, done: set[int]) -> list[int]:
    """The iterations `spec` (all | new | N,M,...) names; ValueError naming what exists."""
    have = run_iterations(ckpt)
    if not have:
        raise ValueError(f"{ckpt}: no iter_NNNNNNN checkpoints (with metadata.json): --iterations needs a training run")
    if spec == "all":
        return have
    if spec == "new":
        return [i for i in have if i not in done]
    try:
        wanted = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--iterations {spec!r}: expected all, new or a list like 1000,2000") from None
    missing = [i for i in wanted if i not in have]
    if missing:
        raise ValueError(f"{ckpt}: no checkpoint for iteration(s) {missing} (present: {have})")
    return wanted


def tokens_seen(ckpt: str | os.PathLike, iteration: int) -> int | None:
    from conversion import lora

    cfg = lora.run_config(Path(ckpt) / f"iter_{iteration:07d}")
    train, model, data = cfg.get("train") or {}, cfg.get("model") or {}, cfg.get("dataset") or {}
    gbs = train.get("global_batch_size")
    seq = data.get("sequence_length") or model.get("seq_length")
    return int(iteration * gbs * seq) if isinstance(gbs, int) and isinstance(seq, int) else None


def read_curve(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line (crash while appending): not a result
            continue
    return rows


def done_iterations(path: str | os.PathLike, kind: str) -> set[int]:
    return {r["iteration"] for r in read_curve(path) if r.get("kind") == kind}


def append(path: str | os.PathLike, row: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def curve_row(kind: str, iteration: int, tokens: int | None, record: dict, file: Path) -> dict:
    row = {"kind": kind, "iteration": iteration, "tokens": tokens, "file": str(file)}
    if kind == "code":
        row["pass_at_k"] = record["pass_at_k"]
    else:
        row["loss"] = {name: d["loss"] for name, d in record["datasets"].items()}
    return row
