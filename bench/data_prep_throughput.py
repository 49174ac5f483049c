"""Wall-clock throughput of `python -m data_prep pretrain` against raw tiktoken on the same
documents, in the same run, and the serial part of a run (issue 26).

Corpus (default `--corpus debian`): ~270 MB of real Go and Java, the source trees of Debian's
`golang-1.19-src` and `openjdk-17-source` packages (fetched with `apt-get download` into --cache,
unpacked with dpkg-deb), written as JSONL files and as The Stack-style parquet (content, lang, ext,
size, max_stars_repo_path, max_stars_repo_licenses). `--corpus python`: the .py files of the venv
and the standard library (the earlier, smaller stand-in).

Measured, interleaved, best of --repeats, on an idle machine (the wall clock is what a user waits):
  raw        tiktoken o200k_harmony encode_ordinary over every document, one process, texts in memory;
  pipeline   the command a user runs, as a subprocess (interpreter start, imports, read, parse,
             filter, hash, dedup, tokenize, write, index, manifest) at each -j of --workers, on each
             format; with --costs also -j 1 on JSONL with --decontaminate humaneval / --redact-pii.
Reports input tokens/s against raw, -j 2's wall against -j 1's, the serial part (everything but the
workers' pass: start, plan, finalize) as a share of the wall, the cost of exact dedup over 10M
hashes (the last step's main serial work), and projections for --files files on 1 and --nodes
nodes of --node-cores cores, the serial part included.

    python bench/data_prep_throughput.py [--corpus debian] [--formats jsonl,parquet] [--workers 1,2] [--costs]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
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


def _pipeline(inputs: Path, out: Path, workers: int, extra: list[str]) -> tuple[float, float, dict, dict]:
    """(wall s, CPU s of the command and its workers, manifest, the run's own timing line) of one
    `python -m data_prep pretrain` as a user runs it."""
    cmd = [sys.executable, "-m", "data_prep", "pretrain", str(inputs), "-o", str(out), "-j", str(workers),
           "--licenses", "any", "--no-progress", *extra]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"data_prep failed ({r.returncode}): {r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("timing: ")]
    timing = {k: float(v.split()[0]) for k, v in (part.strip().split(" ", 1) for part in line[8:].split(","))}
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    return wall, cpu, manifest, timing


RAW_COMMAND = """
import glob, sys
import orjson
from gptoss.tokenizer import encoding
enc = encoding()
for path in sorted(glob.glob(sys.argv[1] + "/*.jsonl")):
    with open(path, "rb") as f:
        for line in f:
            enc.encode_ordinary(orjson.loads(line)["content"])
"""


def _raw_command(jsonl_dir: Path) -> float:
    """Wall s of the raw tokenizer as a command: read and parse the same JSONL files, encode_ordinary
    every document, nothing else (what a user would write without the kit)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", RAW_COMMAND, str(jsonl_dir)], cwd=ROOT, check=True)
    return time.perf_counter() - t


def _dedup_cost(n: int) -> float:
    """Seconds of the last step's exact dedup (pretrain._dedup) over n random 128-bit hashes."""
    import numpy as np

    from data_prep import pretrain

    rng = np.random.default_rng(0)
    scans = [{"hi": rng.integers(0, 2**63, n // 10, dtype=np.uint64), "lo": rng.integers(0, 2**63, n // 10, dtype=np.uint64)}
             for _ in range(10)]  # fmt: skip
    t = time.perf_counter()
    pretrain._dedup(scans)
    return time.perf_counter() - t


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
    ap.add_argument("--nodes", type=int, default=16, help="array tasks (one per node) in the second projection")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shards", type=int, default=16, help="input files per format")
    args = ap.parse_args()

    from gptoss.tokenizer import encoding

    rows = _debian_files(Path(args.cache)) if args.corpus == "debian" else _python_files(args.mb)
    if args.components:
        _components([r[0] for r in rows[:: args.components]])
        return
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="dp-bench-", dir="/tmp"))
    try:
        write_corpus(rows, tmp / "in", args.shards)
        texts = [r[0] for r in rows]
        nbytes = sum(len(t.encode()) for t in texts)
        enc = encoding()
        formats = args.formats.split(",")
        workers = [int(x) for x in args.workers.split(",")]
        variants = [(fmt, w, "") for fmt in formats for w in workers]
        if args.costs:
            variants += [("jsonl", 1, "decontam"), ("jsonl", 1, "pii"), ("jsonl", 1, "decontam+pii")]
        flags = {"": [], "decontam": ["--decontaminate", "humaneval"], "pii": ["--redact-pii"],
                 "decontam+pii": ["--decontaminate", "humaneval", "--redact-pii"]}  # fmt: skip
        raw_times: list[float] = []
        raw_cmd: list[float] = []  # paired with the -j 1 JSONL run of the same repeat
        runs: dict[tuple, list[tuple[float, float, dict, dict]]] = {v: [] for v in variants}
        for rep in range(args.repeats):
            t = time.perf_counter()
            toks = [len(enc.encode_ordinary(x)) for x in texts]
            raw_times.append(time.perf_counter() - t)
            print(f"[repeat {rep + 1}] raw {raw_times[-1]:.2f} s", file=sys.stderr, flush=True)
            for v in variants:
                fmt, w, extra = v
                if v == ("jsonl", 1, ""):
                    raw_cmd.append(_raw_command(tmp / "in" / "jsonl"))
                    print(f"[repeat {rep + 1}] raw command {raw_cmd[-1]:.2f} s", file=sys.stderr, flush=True)
                runs[v].append(_pipeline(tmp / "in" / fmt, tmp / "out", w, flags[extra]))
                wall, cpu, _, timing = runs[v][-1]
                print(f"[repeat {rep + 1}] {v}: {wall:.2f} s, cpu {cpu:.2f} s, {timing}", file=sys.stderr, flush=True)
        raw_tokens = sum(toks)
        raw_s = min(raw_times)
        raw_tps = raw_tokens / raw_s
        langs: dict[str, list[int]] = {}
        for (t, lang, *_), n in zip(rows, toks):
            c = langs.setdefault(lang, [0, 0, 0])
            c[0] += 1
            c[1] += len(t.encode())
            c[2] += n
        print(
            f"corpus: {len(texts):,} files, {nbytes / 1e6:.1f} MB, as {args.shards} JSONL and {args.shards} parquet files"
        )
        for lang, (n, b, k) in sorted(langs.items()):
            print(
                f"  {lang}: {n:,} files, {b / 1e6:.1f} MB, {k:,} tokens, {b / k:.2f} bytes/token, {b / n:,.0f} bytes/file"
            )
        print(
            f"raw tiktoken encode_ordinary, 1 process: {raw_tokens:,} tokens, best of {args.repeats} {raw_s:.2f} s "
            f"= {raw_tps:,.0f} tokens/s ({nbytes / raw_s / 1e6:.2f} MB/s); all runs {', '.join(f'{x:.2f}' for x in raw_times)} s"
        )
        if raw_cmd:
            pairs = [c / r[0] for c, r in zip(raw_cmd, runs[("jsonl", 1, "")])]
            print(
                f"raw tokenizer as a command (read + orjson + encode_ordinary of the same JSONL): best {min(raw_cmd):.2f} s "
                f"= {raw_tokens / min(raw_cmd):,.0f} tokens/s (all: {', '.join(f'{x:.2f}' for x in raw_cmd)}); "
                f"data_prep -j 1 JSONL against it, run after it in each repeat: "
                f"{', '.join(f'{x:.2f}x' for x in pairs)} (median {sorted(pairs)[len(pairs) // 2]:.2f}x)"
            )
            mem = [r / p[0] for r, p in zip(raw_times, runs[("jsonl", 1, "")])]
            print(
                f"data_prep -j 1 JSONL against raw in memory of the same repeat: {', '.join(f'{x:.2f}x' for x in mem)} "
                f"(median {sorted(mem)[len(mem) // 2]:.2f}x)"
            )
        best = {v: min(runs[v], key=lambda r: r[0]) for v in variants}
        for v in variants:
            fmt, w, extra = v
            wall, cpu, m, timing = best[v]
            serial = wall - timing["process"]
            print(
                f"data_prep pretrain {fmt} -j {w}{' ' + ' '.join(flags[extra]) if extra else ''}: best of {args.repeats} "
                f"{wall:.2f} s wall (all: {', '.join(f'{r[0]:.2f}' for r in runs[v])}), {raw_tokens / wall:,.0f} input "
                f"tokens/s = {raw_tokens / wall / raw_tps:.2f}x raw; CPU {cpu:.2f} s; serial part {serial:.2f} s = "
                f"{serial / wall:.1%} of the wall (start-up and imports {wall - sum(timing.values()):.2f} s, plan "
                f"{timing['plan']:.2f} s, finalize {timing.get('finalize', 0):.2f} s); kept {m['kept']['docs']:,} docs, "
                f"{m['kept']['tokens']:,} tokens in {len(m['shards'])} shard(s)"
            )
        for fmt in formats:
            if 1 in workers and len(workers) > 1:
                wmax = max(workers)
                ratio = best[(fmt, wmax, "")][0] / best[(fmt, 1, "")][0]
                print(f"{fmt}: -j {wmax} takes {ratio:.2f}x the wall of -j 1 (linear: {1 / wmax:.2f}x)")
        if args.costs:
            b1 = best[("jsonl", 1, "")][0]
            for extra in ("decontam", "pii", "decontam+pii"):
                print(f"cost of {extra}: {best[('jsonl', 1, extra)][0] / b1 - 1:+.1%} of the -j 1 JSONL wall")
        # projection: the workers' pass scales with cores x nodes; the serial part does not
        n_dedup = 10_000_000
        d10 = min(_dedup_cost(n_dedup) for _ in range(2))
        print(f"exact dedup (the last step's sort) over {n_dedup:,} hashes: {d10:.2f} s")
        base = (formats[0], 1, "")
        wall, cpu, m, timing = best[base]
        docs = m["records"]
        per_core = nbytes / timing["process"]  # input bytes per second of one worker
        other = timing.get("finalize", 0.0) / max(docs, 1)  # the last step per document, on this corpus
        total_bytes = args.files * nbytes / len(texts)
        scale = args.files / n_dedup
        dedup_s = d10 * scale * math.log2(args.files) / math.log2(n_dedup)  # a sort: n log n from 10M
        serial_s = dedup_s + other * args.files
        for nodes in (1, args.nodes):
            par = total_bytes / (per_core * args.node_cores * nodes)
            print(
                f"projection: {args.files:,.0f} files x {nbytes / len(texts):,.0f} bytes/file ({base[0]}, -j 1's "
                f"{per_core / 1e6:.2f} MB/s per worker) on {nodes} node(s) x {args.node_cores} cores: workers "
                f"{par / 3600:.2f} h + serial {serial_s / 3600:.2f} h (dedup {dedup_s / 60:.1f} min, index and manifest "
                f"{other * args.files / 60:.1f} min) = {(par + serial_s) / 3600:.2f} h, serial {serial_s / (par + serial_s):.1%}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
