"""Throughput of `data_prep pretrain` against raw tiktoken on the same documents, in the same run.

Corpus (default `--corpus debian`): ~270 MB of real Go and Java, the source trees of Debian's
`golang-1.19-src` and `openjdk-17-source` packages (fetched with `apt-get download` into --cache,
unpacked with dpkg-deb), written as JSONL files and as The Stack-style parquet (content, lang, ext,
size, max_stars_repo_path, max_stars_repo_licenses). `--corpus python`: the .py files of the venv
and the standard library (the earlier, smaller stand-in).

Measured, interleaved and best of --repeats (the machine may be shared):
  raw        tiktoken o200k_harmony encode_ordinary over every document, one process;
  pipeline   data_prep pretrain (read, parse, filter, hash, dedup, tokenize, write, merge) at each
             -j of --workers, on each format; with --costs also -j 1 on JSONL with
             --decontaminate humaneval, with --redact-pii, and with both.
Reports tokens/s, the ratio per core against raw, bytes/token per language, and a projection for
--files files (The Stack: ~200M) on --node-cores cores.

    python bench/data_prep_throughput.py [--corpus debian] [--formats jsonl,parquet] [--workers 1,2] [--costs]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the pool's workers): on a shared
    machine the wall clock measures the neighbours too, CPU time mostly this work."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
sys.path.insert(0, str(ROOT))

DEBIAN = {  # package -> (language, extension, license of the tree, where the sources are)
    "golang-1.19-src": ("Go", "go", "BSD-3-Clause", "usr/share/go-1.19"),
    "openjdk-17-source": ("Java", "java", "GPL-2.0-with-classpath-exception", "usr/lib/jvm/openjdk-17/lib/src.zip"),
}


def _debian_files(cache: Path) -> list[tuple[str, str, str, str, str]]:
    """(text, language, ext, license, path) of every source file of the two packages."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for pkg, (lang, ext, lic, where) in DEBIAN.items():
        tree = cache / pkg
        if not tree.exists():
            debs = sorted(cache.glob(f"{pkg}_*.deb"))
            if not debs:
                subprocess.run(["apt-get", "download", pkg], cwd=cache, check=True, capture_output=True)
                debs = sorted(cache.glob(f"{pkg}_*.deb"))
            tmp = cache / f"{pkg}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], check=True)
            if where.endswith(".zip"):
                (tmp / "zip").mkdir()
                subprocess.run(["unzip", "-q", str(tmp / where), "-d", str(tmp / "zip")], check=True)
            tmp.rename(tree)
        root = tree / ("zip" if where.endswith(".zip") else where)
        for p in sorted(root.rglob(f"*.{ext}")):
            try:
                out.append((p.read_text(encoding="utf-8"), lang, ext, lic, str(p.relative_to(tree))))
            except (UnicodeDecodeError, OSError):
                continue
    return out


def _python_files(mb: float) -> list[tuple[str, str, str, str, str]]:
    site = Path(os.__file__).parent
    files = sorted(glob.glob(str(ROOT / ".venv/lib/python3.11/site-packages/**/*.py"), recursive=True))
    files += sorted(glob.glob(str(site / "**/*.py"), recursive=True))
    out, total = [], 0
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and len(text) <= 1_000_000:
            out.append((text, "Python", "py", "MIT", f))
            total += len(text.encode())
            if total >= mb * 1e6:
                break
    return out


def write_corpus(rows: list[tuple[str, str, str, str, str]], dst: Path, shards: int) -> None:
    """The same documents as `shards` JSONL files (dst/jsonl) and parquet files (dst/parquet, row
    groups of 256 documents), in the same order."""
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    per = (len(rows) + shards - 1) // shards
    (dst / "jsonl").mkdir(parents=True)
    (dst / "parquet").mkdir(parents=True)
    for k in range(shards):
        part = rows[k * per : (k + 1) * per]
        recs = [
            {"content": t, "lang": lang, "ext": ext, "size": len(t.encode()), "max_stars_repo_path": path,
             "max_stars_repo_licenses": [lic]}
            for t, lang, ext, lic, path in part
        ]  # fmt: skip
        with open(dst / "jsonl" / f"part_{k:03d}.jsonl", "wb") as f:
            for r in recs:
                f.write(orjson.dumps(r) + b"\n")
        pq.write_table(pa.Table.from_pylist(recs), dst / "parquet" / f"part_{k:03d}.parquet", row_group_size=256)


def _components(texts: list[str], repeats: int = 5) -> None:
    """The per-document work of the pipeline's optional passes against its tokenization, on the
    same documents, alternating, min of `repeats` (process CPU time)."""
    from data_prep.decontam import DecontamConfig, Matcher
    from data_prep.pii import Redactor
    from gptoss.tokenizer import encoding

    enc = encoding()
    data = [t.encode() for t in texts]
    matcher, redactor = Matcher(DecontamConfig(["humaneval"])), Redactor()
    parts = {
        "tokenize (encode_to_numpy)": (lambda x: enc.encode_to_numpy(x, disallowed_special=()), texts),
        "decontaminate humaneval": (matcher.find, data),
        "redact pii": (redactor.redact_bytes, data),
    }
    best = {k: float("inf") for k in parts}
    for _ in range(repeats):
        for k, (fn, xs) in parts.items():
            c = time.process_time()
            for x in xs:
                fn(x)
            best[k] = min(best[k], time.process_time() - c)
    tok = best["tokenize (encode_to_numpy)"]
    print(f"components on {len(texts):,} documents, {sum(map(len, data)) / 1e6:.1f} MB, CPU s, min of {repeats}:")
    for k, v in best.items():
        print(f"  {k}: {v:.2f} s ({v / tok:.1%} of tokenizing)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["debian", "python"], default="debian")
    ap.add_argument("--cache", default="/tmp/dp-bench-debian", help="where the .deb files are fetched and unpacked")
    ap.add_argument("--mb", type=float, default=30.0, help="--corpus python: MB of source text")
    ap.add_argument("--formats", default="jsonl,parquet")
    ap.add_argument("--workers", default="1,2", help="worker counts to run")
    ap.add_argument("--costs", action="store_true", help="also -j 1 JSONL with --decontaminate / --redact-pii")
    ap.add_argument(
        "--components",
        type=int,
        default=0,
        metavar="N",
        help="instead of whole runs: CPU time of tokenizing, decontaminating and redacting every N-th "
        "document, interleaved 5 times in one process (resolves costs of a few %% on a shared machine)",
    )
    ap.add_argument("--files", type=float, default=200e6, help="files in the projection (The Stack: ~200M)")
    ap.add_argument("--node-cores", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shards", type=int, default=16, help="input files per format")
    args = ap.parse_args()

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)  # megatron-core logs every index it opens
    from data_prep import pretrain
    from data_prep.decontam import DecontamConfig
    from data_prep.filters import FilterConfig
    from gptoss.tokenizer import encoding
    from megatron_cpu.compat import import_bridge

    import_bridge()  # imported once up front: no side pays megatron's import time
    import megatron.core.datasets.indexed_dataset  # noqa: F401

    rows = _debian_files(Path(args.cache)) if args.corpus == "debian" else _python_files(args.mb)
    if args.components:
        _components([r[0] for r in rows[:: args.components]])
        return
    tmp = Path(tempfile.mkdtemp(prefix="dp-bench-", dir="/tmp"))
    try:
        write_corpus(rows, tmp / "in", args.shards)
        texts = [r[0] for r in rows]
        nbytes = sum(len(t.encode()) for t in texts)
        enc = encoding()
        # The Stack-style license column holds the real licenses (OpenJDK is GPL): the bench keeps
        # every license so that both sides see the same documents.
        filters = FilterConfig(licenses=[])
        formats = args.formats.split(",")
        workers = [int(x) for x in args.workers.split(",")]
        variants = [(fmt, w, "") for fmt in formats for w in workers]
        if args.costs:
            variants += [("jsonl", 1, "decontam"), ("jsonl", 1, "pii"), ("jsonl", 1, "decontam+pii")]
        raw_times: list[float] = []
        raw_cpu: list[float] = []
        times: dict[tuple, list[float]] = {v: [] for v in variants}
        cpus: dict[tuple, list[float]] = {v: [] for v in variants}
        manifests: dict[tuple, dict] = {}
        # warm-up: the first run in a process pays one-time loads (tokenizer, megatron's builder)
        warm = pretrain.PretrainConfig(
            inputs=[str(tmp / "in" / "jsonl" / "part_000.jsonl")], output=tmp / "warm", filters=filters,
            progress=False, decontam=DecontamConfig(["humaneval"]), redact_pii=True,
        )  # fmt: skip
        pretrain.run(warm, log=lambda s: None)
        shutil.rmtree(tmp / "warm")
        for rep in range(args.repeats):
            t, c = time.perf_counter(), _cpu()
            toks = [len(enc.encode_ordinary(x)) for x in texts]
            raw_times.append(time.perf_counter() - t)
            raw_cpu.append(_cpu() - c)
            print(f"[repeat {rep + 1}] raw {raw_times[-1]:.2f} s, cpu {raw_cpu[-1]:.2f} s", file=sys.stderr, flush=True)
            for v in variants:
                fmt, w, extra = v
                out = tmp / "out"
                cfg = pretrain.PretrainConfig(
                    inputs=[str(tmp / "in" / fmt)],
                    output=out,
                    workers=w,
                    filters=filters,
                    progress=False,
                    decontam=DecontamConfig(["humaneval"]) if "decontam" in extra else None,
                    redact_pii="pii" in extra,
                )
                t, c = time.perf_counter(), _cpu()
                manifests[v] = pretrain.run(cfg, log=lambda s: None)
                times[v].append(time.perf_counter() - t)
                cpus[v].append(_cpu() - c)
                print(f"[repeat {rep + 1}] {v}: {times[v][-1]:.2f} s, cpu {cpus[v][-1]:.2f} s", file=sys.stderr, flush=True)
                shutil.rmtree(out)
        raw_tokens = sum(toks)
        raw_s = min(raw_times)
        raw_tps = raw_tokens / raw_s
        langs: dict[str, list[int]] = {}
        for (t, lang, *_), n in zip(rows, toks):
            c = langs.setdefault(lang, [0, 0, 0])
            c[0] += 1
            c[1] += len(t.encode())
            c[2] += n
        print(f"corpus: {len(texts):,} files, {nbytes / 1e6:.1f} MB, as {args.shards} JSONL and {args.shards} parquet files")
        for lang, (n, b, k) in sorted(langs.items()):
            print(f"  {lang}: {n:,} files, {b / 1e6:.1f} MB, {k:,} tokens, {b / k:.2f} bytes/token, {b / n:,.0f} bytes/file")
        print(
            f"raw tiktoken encode_ordinary, 1 process: {raw_tokens:,} tokens, best of {args.repeats} {raw_s:.2f} s "
            f"= {raw_tps:,.0f} tokens/s ({nbytes / raw_s / 1e6:.2f} MB/s)"
        )
        rcpu = min(raw_cpu)
        print(f"  raw CPU time: best {rcpu:.2f} s ({raw_tokens / rcpu:,.0f} tokens per CPU second)")
        cpu_ratio = {v: rcpu / min(cpus[v]) for v in variants}
        rate: dict[tuple, float] = {}
        for v in variants:
            fmt, w, extra = v
            dt = min(times[v])
            tps = raw_tokens / dt  # the pipeline reads every file: compare per input token
            rate[v] = tps / w
            m = manifests[v]
            flag = {"": "", "decontam": " --decontaminate humaneval", "pii": " --redact-pii",
                    "decontam+pii": " --decontaminate humaneval --redact-pii"}[extra]  # fmt: skip
            print(
                f"data_prep pretrain {fmt} -j {w}{flag}: best of {args.repeats} {dt:.2f} s, {tps:,.0f} input tokens/s "
                f"= {tps / w / raw_tps:.2f}x raw per core (wall); CPU {min(cpus[v]):.2f} s = {cpu_ratio[v]:.2f}x raw per "
                f"CPU second; kept {m['kept']['docs']:,} docs, {m['kept']['tokens']:,} tokens"
            )
        for fmt in formats:
            if 1 in workers and len(workers) > 1:
                wmax = max(workers)
                sc = (rate[(fmt, wmax, "")] * wmax) / rate[(fmt, 1, "")]
                eff = min(cpus[(fmt, 1, "")]) / min(cpus[(fmt, wmax, "")])
                print(
                    f"scaling {fmt} 1 -> {wmax} workers: wall x{sc:.2f} ({sc / wmax:.0%} of linear); CPU per token at "
                    f"-j {wmax} = {eff:.0%} of -j 1's efficiency (linear if the cores are free)"
                )
        base = (formats[0], min(workers), "")
        cost = {}
        if args.costs:
            b1 = min(times[("jsonl", 1, "")])
            c1 = min(cpus[("jsonl", 1, "")])
            for extra in ("decontam", "pii", "decontam+pii"):
                cost[extra] = min(cpus[("jsonl", 1, extra)]) / c1 - 1
                wall = min(times[("jsonl", 1, extra)]) / b1 - 1
                print(f"cost of {extra}: {cost[extra]:+.1%} of the -j 1 JSONL pipeline's CPU time (wall: {wall:+.1%})")
        per_core_bytes = nbytes / min(cpus[base])  # bytes per CPU second, pipeline
        bpf = nbytes / len(texts)
        hours = args.files * bpf / (per_core_bytes * args.node_cores) / 3600
        both = cost.get("decontam+pii", 0.0)
        print(
            f"projection: {args.files:,.0f} files x {bpf:,.0f} bytes/file (this corpus's mean) on a {args.node_cores}-core "
            f"node at {per_core_bytes / 1e6:.2f} MB/s/core ({base[0]}), linear scaling: {hours:.1f} h; "
            f"with decontamination and redaction ({both:+.0%}): {hours * (1 + both):.1f} h"
        )
        print(json.dumps({"raw_tokens_per_cpu_s": raw_tokens / rcpu, "cpu_ratio": {str(v): r for v, r in cpu_ratio.items()}}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
