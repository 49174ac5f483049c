"""Throughput of `data_prep pretrain` against raw tiktoken on the same text, in the same run.

Corpus: real source code (the .py files of the installed packages, the closest offline stand-in for
The Stack), written as The Stack-style parquet shards. Measured:
  raw        tiktoken o200k_harmony encode_ordinary over every kept document, one process;
  pipeline   python -m data_prep pretrain (read, filter, dedup, tokenize, write, merge) at -j 1..N.
Reports tokens/s, the ratio per core against raw, and a projection for 200M files on 64 cores.

    python bench/data_prep_throughput.py [--mb 60] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_corpus(dst: Path, mb: float, shards: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    site = Path(os.__file__).parent
    files = sorted(glob.glob(str(ROOT / ".venv/lib/python3.11/site-packages/**/*.py"), recursive=True))
    files += sorted(glob.glob(str(site / "**/*.py"), recursive=True))
    rows, total = [], 0
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip() or len(text) > 1_000_000:
            continue
        rows.append({"content": text, "lang": "Python", "max_stars_repo_path": f, "max_stars_repo_licenses": ["MIT"]})
        total += len(text.encode())
        if total >= mb * 1e6:
            break
    per = (len(rows) + shards - 1) // shards
    dst.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        pq.write_table(
            pa.Table.from_pylist(rows[k * per : (k + 1) * per]), dst / f"shard_{k:03d}.parquet", row_group_size=500
        )
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=60.0, help="corpus size in MB of source text")
    ap.add_argument("--workers", default=f"1,{os.cpu_count()}", help="worker counts to run")
    ap.add_argument("--files", type=float, default=200e6, help="files in the projection (The Stack: ~200M)")
    ap.add_argument("--node-cores", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from data_prep import pretrain
    from data_prep.filters import FilterConfig
    from gptoss.tokenizer import encoding

    tmp = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    try:
        nbytes = build_corpus(tmp / "in", args.mb, shards=8)
        enc = encoding()
        # Raw tokenizer over exactly the documents the pipeline keeps (its manifest says which).
        ref = pretrain.run(
            pretrain.PretrainConfig(
                inputs=[str(tmp / "in")], output=tmp / "ref", workers=1, progress=False, filters=FilterConfig()
            ),
            log=lambda s: None,
        )
        import pyarrow.parquet as pq

        texts = []
        for f in sorted((tmp / "in").glob("*.parquet")):
            texts += pq.read_table(f, columns=["content"]).column("content").to_pylist()
        print(f"corpus: {len(texts):,} Python files, {nbytes / 1e6:.1f} MB; kept {ref['kept']['docs']:,} docs")
        workers = [int(x) for x in args.workers.split(",")]
        kept_tokens = ref["kept"]["tokens"]
        raw_times: list[float] = []
        times: dict[int, list[float]] = {w: [] for w in workers}
        # Interleaved repeats, best of each: the machine may be shared, and the minimum is the
        # least disturbed measurement of both sides alike.
        for _ in range(args.repeats):
            t = time.perf_counter()
            raw_tokens = sum(len(enc.encode_ordinary(x)) for x in texts)
            raw_times.append(time.perf_counter() - t)
            for w in workers:
                out = tmp / f"out{w}"
                t = time.perf_counter()
                m = pretrain.run(
                    pretrain.PretrainConfig(inputs=[str(tmp / "in")], output=out, workers=w, progress=False),
                    log=lambda s: None,
                )
                times[w].append(time.perf_counter() - t)
                assert m["kept"]["tokens"] == kept_tokens
                shutil.rmtree(out)
        raw_s = min(raw_times)
        raw_tps = raw_tokens / raw_s
        print(
            f"raw tiktoken encode_ordinary, 1 process, all {len(texts):,} files: {raw_tokens:,} tokens, best of "
            f"{args.repeats} {raw_s:.2f} s = {raw_tps:,.0f} tokens/s ({nbytes / raw_s / 1e6:.2f} MB/s)"
        )
        results = {}
        for w in workers:
            dt = min(times[w])
            # The pipeline reads every file and tokenizes the kept ones: compare per input token.
            tps = raw_tokens / dt
            results[w] = (dt, tps)
            print(
                f"data_prep pretrain -j {w}: best of {args.repeats} {dt:.2f} s, {tps:,.0f} input tokens/s = "
                f"{tps / w / raw_tps:.0%} of raw per core ({kept_tokens / dt:,.0f} kept tokens/s)"
            )
        w1 = results.get(1)
        if w1 and len(results) > 1:
            wmax = max(results)
            print(f"scaling 1 -> {wmax} workers: x{results[wmax][1] / w1[1]:.2f}")
        per_core = (w1 or results[min(results)])[1] / (1 if w1 else min(results))
        tok_per_file = raw_tokens / len(texts)
        hours = args.files * tok_per_file / (per_core * args.node_cores) / 3600
        print(
            f"projection: {args.files:,.0f} files x {tok_per_file:,.0f} tokens/file (this corpus's mean) on a "
            f"{args.node_cores}-core node at {per_core:,.0f} tokens/s/core with linear scaling: {hours:.1f} h"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
