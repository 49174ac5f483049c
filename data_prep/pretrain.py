"""Raw corpus -> Megatron indexed dataset (<prefix>.bin/.idx) + manifest.json.

Two parallel passes over ordered work units (see readers.py), then a merge:

1. scan: read, validate and filter every record; hash the survivors (xxh3-128 of the UTF-8 text)
   and checksum the input files. Cheap: no tokenization.
2. dedup (main process): the first occurrence of each hash, in unit order, is kept. Done on numpy
   arrays of hashes, so it needs ~24 bytes per candidate document and no Python set.
3. tokenize: each worker re-reads one unit, encodes the kept documents with o200k_harmony
   (encode_ordinary: special-token text inside code stays plain text), appends EOD, and writes a
   per-unit indexed dataset with megatron-core's IndexedDatasetBuilder.
4. merge: the unit datasets are concatenated in unit order into the output prefix (one, or several
   of about --shard-tokens tokens each), then manifest.json is written last.

Every step writes its results under <output>/.work/ with atomic renames, and skips what is already
there, so a killed run continues where it stopped. Nothing depends on the worker count or on the
order in which workers finish, so the output is byte-identical for any -j and after any resume.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.filters import Filter, FilterConfig, language
from data_prep.readers import Unit, expand_inputs, list_units, read_unit
from data_prep.util import DropStats, atomic_write_text, dump_json, sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ABORT_ENV = "DATA_PREP_ABORT_AFTER_UNITS"  # test hook: die like a killed job after N units


class PlanMismatchError(RuntimeError):
    """The output directory holds work or a dataset from different inputs or settings."""


@dataclass
class PretrainConfig:
    inputs: list[str]
    output: Path
    text_key: str = "content"
    filters: FilterConfig = field(default_factory=FilterConfig)
    workers: int = 1
    prefix: str = "text_document"
    shard_tokens: int = 0  # 0: one output prefix; else start a new shard after this many tokens
    overwrite: bool = False
    keep_work: bool = False
    progress: bool = True


# ---------------------------------------------------------------------------------------------
# Worker functions (module level so that multiprocessing can pickle them)
# ---------------------------------------------------------------------------------------------

_ENC = None


def _encoder():
    global _ENC
    if _ENC is None:
        from gptoss.tokenizer import encoding

        _ENC = encoding()
    return _ENC


def _scan_unit(job: tuple[int, Unit, str, FilterConfig, str, bool]) -> tuple[int, int]:
    """Pass 1 for one unit: writes scan/uNNNNNN.{npz,json}; returns (unit index, records)."""
    import xxhash

    i, unit, text_key, fcfg, work, checksum = job
    flt = Filter(fcfg)
    drops = DropStats()
    drops_by_lang: dict[str, DropStats] = defaultdict(DropStats)
    hi, lo, idx, line, nbytes, lang_ids = [], [], [], [], [], []
    langs: dict[str, int] = {}
    n = 0
    for rec in read_unit(unit, text_key):
        n += 1
        if rec.error is not None:
            drops.add(rec.error, rec.nbytes, rec.loc)
            drops_by_lang["(unparsed)"].add(rec.error, rec.nbytes, None)
            continue
        lang = language(rec.meta)
        reason = flt.check(rec.text, rec.nbytes, rec.meta, lang)
        if reason is not None:
            drops.add(reason, rec.nbytes, rec.loc)
            drops_by_lang[lang].add(reason, rec.nbytes, None)
            continue
        d = xxhash.xxh3_128_digest(rec.text.encode("utf-8"))
        hi.append(int.from_bytes(d[:8], "little"))
        lo.append(int.from_bytes(d[8:], "little"))
        idx.append(rec.index)
        line.append(rec.line)
        nbytes.append(rec.nbytes)
        lang_ids.append(langs.setdefault(lang, len(langs)))
    base = Path(work) / "scan" / f"u{i:06d}"
    tmp = base.with_name(base.name + ".tmp.npz")
    np.savez(
        tmp,
        hi=np.array(hi, dtype=np.uint64),
        lo=np.array(lo, dtype=np.uint64),
        idx=np.array(idx, dtype=np.int64),
        line=np.array(line, dtype=np.int64),
        nbytes=np.array(nbytes, dtype=np.int64),
        lang=np.array(lang_ids, dtype=np.int32),
    )
    os.replace(tmp, base.with_suffix(".npz"))
    info = {
        "records": n,
        "langs": sorted(langs, key=langs.get),
        "dropped": drops.to_dict(),
        "dropped_by_lang": {k: v.to_dict() for k, v in drops_by_lang.items()},
        "sha256": sha256_file(unit.path) if checksum else None,
    }
    # The json is the unit's "done" marker: written after the npz, so its presence means both exist.
    atomic_write_text(base.with_suffix(".json"), dump_json(info))
    return i, n


def _tokenize_unit(job: tuple[int, Unit, str, np.ndarray, np.ndarray, list[str], str]) -> tuple[int, int, int]:
    """Pass 3 for one unit: writes tok/uNNNNNN.{bin,idx,json}; returns (unit index, docs, tokens)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from gptoss.tokenizer import EOD_ID

    i, unit, text_key, keep, keep_lang, langs, work = job
    enc = _encoder()
    base = Path(work) / "tok" / f"u{i:06d}"
    tmp_bin, tmp_idx = f"{base}.bin.tmp", f"{base}.idx.tmp"
    builder = IndexedDatasetBuilder(tmp_bin, dtype=np.int32)
    tokens_by_lang = np.zeros(len(langs), dtype=np.int64)
    docs_by_lang = np.zeros(len(langs), dtype=np.int64)
    total = 0
    k = 0
    if len(keep):
        for rec in read_unit(unit, text_key, only=set(keep.tolist())):
            if rec.index != keep[k]:
                continue
            if rec.text is None:
                raise RuntimeError(
                    f"{rec.loc} was a valid document when scanned and is not now: the input changed during "
                    "the run. Re-run with --overwrite."
                )
            # encode_to_numpy with no allowed specials is encode_ordinary (special-token text stays
            # text) without building a Python list: about 10% faster end to end.
            ids = enc.encode_to_numpy(rec.text, disallowed_special=())
            arr = np.empty(ids.size + 1, dtype=np.int32)
            arr[:-1] = ids
            arr[-1] = EOD_ID
            builder.add_document(arr, [arr.size])
            tokens_by_lang[keep_lang[k]] += arr.size
            docs_by_lang[keep_lang[k]] += 1
            total += arr.size
            k += 1
            if k == len(keep):
                break
    if k != len(keep):
        raise RuntimeError(
            f"{unit.name}: found {k} of {len(keep)} scanned documents; the input changed. Re-run with --overwrite."
        )
    builder.finalize(tmp_idx)
    os.replace(tmp_bin, f"{base}.bin")
    os.replace(tmp_idx, f"{base}.idx")
    info = {
        "docs": int(k),
        "tokens": int(total),
        "by_lang": {
            langs[j]: {"docs": int(docs_by_lang[j]), "tokens": int(tokens_by_lang[j])}
            for j in range(len(langs))
            if docs_by_lang[j]
        },
    }
    atomic_write_text(base.with_suffix(".json"), dump_json(info))
    return i, int(k), int(total)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def _plan(cfg: PretrainConfig, files: list[str], units: list[Unit]) -> dict[str, Any]:
    """Everything the output depends on. A resumed run must have the same plan."""
    from gptoss.tokenizer import fingerprint

    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": fingerprint(),
        "text_key": cfg.text_key,
        "filters": cfg.filters.to_dict(),
        "prefix": cfg.prefix,
        "shard_tokens": cfg.shard_tokens,
        "inputs": [{"path": f, "bytes": os.path.getsize(f), "mtime_ns": os.stat(f).st_mtime_ns} for f in files],
        "units": len(units),
    }


def _run_jobs(fn: Callable, jobs: list, workers: int, on_done: Callable[[Any], None]) -> None:
    """Run jobs inline (workers == 1) or in a process pool; `on_done` sees results as they finish.

    Results are only counted, never ordered by arrival, so completion order cannot reach the output.
    """
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            on_done(fn(j))
        return
    # fork: workers inherit the loaded tokenizer and megatron-core instead of importing them again.
    ctx = mp.get_context("fork")
    pool = ctx.Pool(min(workers, len(jobs)))
    try:
        for res in pool.imap_unordered(fn, jobs, chunksize=1):
            on_done(res)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


class SimulatedKill(BaseException):
    """Raised by the test hook; the CLI turns it into os._exit so that nothing is cleaned up."""


class _AbortHook:
    """Simulates a kill (tests): DATA_PREP_ABORT_AFTER_UNITS=PHASE:N (PHASE scan or tokenize) stops
    the run dead once N units of that phase finished in this process. The pool is terminated
    (workers die mid-write and leave temporary files, as under a real kill) and the CLI exits with
    os._exit(75), skipping every cleanup."""

    def __init__(self) -> None:
        v = os.environ.get(ABORT_ENV, "")
        phase, _, n = v.partition(":")
        if v and (phase not in ("scan", "tokenize") or not n.isdigit()):
            raise ValueError(f"{ABORT_ENV}={v!r}: expected scan:N or tokenize:N")
        self.phase, self.left = (phase, int(n)) if v else ("", 0)

    def tick(self, phase: str) -> None:
        if phase != self.phase:
            return
        self.left -= 1
        if self.left <= 0:
            raise SimulatedKill(f"{ABORT_ENV} reached")


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, mininterval=1.0, smoothing=0.1)


def _dedup(scans: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Per unit, a boolean mask of candidates that repeat an earlier (unit order) candidate."""
    sizes = [len(s["hi"]) for s in scans]
    if sum(sizes) == 0:
        return [np.zeros(0, dtype=bool) for _ in scans]
    hi = np.concatenate([s["hi"] for s in scans])
    lo = np.concatenate([s["lo"] for s in scans])
    order = np.lexsort((lo, hi))  # stable: equal hashes stay in input order, so the first one wins
    same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
    dup = np.zeros(hi.size, dtype=bool)
    dup[order[1:][same]] = True
    out, start = [], 0
    for n in sizes:
        out.append(dup[start : start + n])
        start += n
    return out


def _loc(unit: Unit, line: int) -> str:
    return f"{unit.path}:{line}" if unit.kind == "jsonl" else f"{unit.path}:row{line}"


def _append(builder, prefix: str) -> None:
    """IndexedDatasetBuilder.add_index without its gc.collect(), which costs ~0.6 s per call in a
    process that has imported torch: thousands of units would spend hours collecting garbage."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    index = _IndexReader(prefix + ".idx", multimodal=False)
    if index.dtype != builder.dtype:
        raise RuntimeError(f"{prefix}.idx has dtype {index.dtype}, expected {builder.dtype}")
    offset = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(index.sequence_lengths.tolist())
    builder.document_indices.extend((offset + index.document_indices[1:]).tolist())
    del index
    with open(prefix + ".bin", "rb") as f:
        shutil.copyfileobj(f, builder.data_file, 1 << 22)


def output_prefixes(out: Path, prefix: str, n_shards: int) -> list[Path]:
    if n_shards <= 1:
        return [out / prefix]
    return [out / f"{prefix}_{k:05d}" for k in range(n_shards)]


def run(cfg: PretrainConfig, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Build the dataset described by `cfg`; returns the manifest (also written to <output>/manifest.json)."""
    from gptoss.tokenizer import encoding, fingerprint

    t0 = time.time()
    out = Path(cfg.output).absolute()
    work = out / ".work"
    files = expand_inputs(cfg.inputs)
    units = list_units(files)
    plan = _plan(cfg, files, units)
    manifest_path = out / MANIFEST

    if manifest_path.exists() and not cfg.overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("plan") == plan:
            log(f"{out}: already complete for these inputs and settings ({manifest_path})")
            return old
        raise PlanMismatchError(
            f"{out} already holds a dataset made from other inputs or settings (see {manifest_path}); "
            "pass --overwrite to replace it or choose another --output"
        )
    if cfg.overwrite:
        shutil.rmtree(work, ignore_errors=True)
        manifest_path.unlink(missing_ok=True)
    plan_path = work / "plan.json"
    if plan_path.exists():
        if json.loads(plan_path.read_text()) != plan:
            raise PlanMismatchError(
                f"{work} holds an interrupted run with other inputs or settings; pass --overwrite to discard it"
            )
        log(f"resuming the interrupted run in {work}")
    (work / "scan").mkdir(parents=True, exist_ok=True)
    (work / "tok").mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan_path, dump_json(plan))

    encoding()  # load before forking so that workers share it
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    abort = _AbortHook()
    workers = max(1, cfg.workers)
    log(f"{len(files)} input file(s) in {len(units)} unit(s), {workers} worker(s)")
    # Largest units first: the pool's tail is shorter when the big pieces start early.
    by_size = sorted(range(len(units)), key=lambda i: (-units[i].size, i))
    first_part = {}
    for i, u in enumerate(units):
        first_part.setdefault(u.path, i)

    # ---- pass 1: scan ----
    todo = [i for i in by_size if not (work / "scan" / f"u{i:06d}.json").exists()]
    bar = _progress(len(units), "scan", "unit", cfg.progress)
    bar.update(len(units) - len(todo))
    scanned = [0]

    def scan_done(res: tuple[int, int]) -> None:
        scanned[0] += res[1]
        bar.update(1)
        bar.set_postfix(docs=scanned[0], refresh=False)
        abort.tick("scan")

    jobs = [(i, units[i], cfg.text_key, cfg.filters, str(work), first_part[units[i].path] == i) for i in todo]
    _run_jobs(_scan_unit, jobs, workers, scan_done)
    bar.close()

    # ---- dedup ----
    infos = [json.loads((work / "scan" / f"u{i:06d}.json").read_text()) for i in range(len(units))]
    scans = []
    for i in range(len(units)):
        with np.load(work / "scan" / f"u{i:06d}.npz") as z:
            scans.append({k: z[k] for k in z.files})
    dups = _dedup(scans) if cfg.filters.dedup else [np.zeros(len(s["hi"]), dtype=bool) for s in scans]

    drops = DropStats()
    lang_drops: dict[str, DropStats] = defaultdict(DropStats)
    for i, info in enumerate(infos):
        drops.merge(info["dropped"])
        for lang, d in info["dropped_by_lang"].items():
            lang_drops[lang].merge(d)
        s, dup = scans[i], dups[i]
        for j in np.flatnonzero(dup):
            lang = info["langs"][s["lang"][j]]
            drops.add("duplicate", int(s["nbytes"][j]), _loc(units[i], int(s["line"][j])))
            lang_drops[lang].add("duplicate", int(s["nbytes"][j]), None)

    # ---- pass 2: tokenize ----
    keep = [np.asarray(s["idx"][~d]) for s, d in zip(scans, dups)]
    keep_lang = [np.asarray(s["lang"][~d]) for s, d in zip(scans, dups)]
    total_docs = int(sum(len(k) for k in keep))
    todo = [i for i in by_size if not (work / "tok" / f"u{i:06d}.json").exists()]
    done_docs = total_docs - sum(len(keep[i]) for i in todo)
    bar = _progress(total_docs, "tokenize", "doc", cfg.progress)
    bar.update(done_docs)
    t_tok, tok_count = time.time(), [0]

    def tok_done(res: tuple[int, int, int]) -> None:
        tok_count[0] += res[2]
        bar.update(res[1])
        bar.set_postfix_str(f"{tok_count[0] / max(time.time() - t_tok, 1e-9) / 1e3:,.0f}k tok/s", refresh=False)
        abort.tick("tokenize")

    jobs = [(i, units[i], cfg.text_key, keep[i], keep_lang[i], infos[i]["langs"], str(work)) for i in todo]
    _run_jobs(_tokenize_unit, jobs, workers, tok_done)
    bar.close()

    # ---- merge, in unit order ----
    toks = [json.loads((work / "tok" / f"u{i:06d}.json").read_text()) for i in range(len(units))]
    groups: list[list[int]] = [[]]
    acc = 0
    for i, t in enumerate(toks):
        if t["docs"] == 0:
            continue
        if cfg.shard_tokens and acc >= cfg.shard_tokens:
            groups.append([])
            acc = 0
        groups[-1].append(i)
        acc += t["tokens"]
    kept_docs = sum(t["docs"] for t in toks)
    kept_tokens = sum(t["tokens"] for t in toks)
    prefixes = output_prefixes(out, cfg.prefix, len(groups)) if kept_docs else []
    shards = []
    for group, prefix in zip(groups, prefixes):
        tmp_bin, tmp_idx = f"{prefix}.bin.tmp", f"{prefix}.idx.tmp"
        builder = IndexedDatasetBuilder(tmp_bin, dtype=np.int32)
        for i in group:
            _append(builder, str(work / "tok" / f"u{i:06d}"))
        builder.finalize(tmp_idx)
        os.replace(tmp_bin, f"{prefix}.bin")
        os.replace(tmp_idx, f"{prefix}.idx")
        shards.append(
            {
                "prefix": prefix.name,
                "docs": sum(toks[i]["docs"] for i in group),
                "tokens": sum(toks[i]["tokens"] for i in group),
            }
        )

    languages: dict[str, dict[str, Any]] = {}
    for t in toks:
        for lang, c in t["by_lang"].items():
            k = languages.setdefault(lang, {"kept": {"docs": 0, "tokens": 0}, "dropped": {}})
            k["kept"]["docs"] += c["docs"]
            k["kept"]["tokens"] += c["tokens"]
    for lang, d in lang_drops.items():
        k = languages.setdefault(lang, {"kept": {"docs": 0, "tokens": 0}, "dropped": {}})
        k["dropped"] = {r: {"docs": v["docs"], "bytes": v["bytes"]} for r, v in d.to_dict().items()}
    sha = {units[i].path: infos[i]["sha256"] for i in range(len(units)) if infos[i]["sha256"]}
    records = sum(info["records"] for info in infos)
    dropped = drops.to_dict()
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": fingerprint(),
        "eod_id": _eod(),
        "dtype": "int32",
        "prefixes": [s["prefix"] for s in shards],
        "shards": shards,
        "inputs": [{"path": f, "bytes": os.path.getsize(f), "sha256": sha.get(f)} for f in files],
        "records": records,
        "kept": {"docs": kept_docs, "tokens": kept_tokens},
        "dropped": dropped,
        "dropped_docs": sum(v["docs"] for v in dropped.values()),
        "languages": {k: languages[k] for k in sorted(languages)},
        "plan": plan,
    }
    # The manifest goes last: its presence is what marks the dataset complete.
    atomic_write_text(manifest_path, dump_json(manifest))
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    dt = time.time() - t0
    log(
        f"{out}: kept {kept_docs:,} of {records:,} documents, {kept_tokens:,} tokens in {len(shards)} shard(s), "
        f"{dt:.1f} s ({kept_tokens / max(dt, 1e-9):,.0f} tokens/s)"
    )
    for reason, v in dropped.items():
        log(f"  dropped {v['docs']:,} ({reason}), e.g. {', '.join(v['examples'][:3])}")
    if not kept_docs:
        raise RuntimeError(f"no document survived the filters (see {manifest_path}); nothing written but the manifest")
    return manifest


def _eod() -> int:
    from gptoss.tokenizer import EOD_ID

    return EOD_ID


def read_manifest(dataset_dir: Path | str) -> dict[str, Any]:
    """The manifest of a dataset made by `run`, with its tokenizer checked against this kit's."""
    from gptoss.tokenizer import check_fingerprint

    path = Path(dataset_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: build the dataset with `python -m data_prep pretrain --output {dataset_dir} ...`"
        )
    m = json.loads(path.read_text())
    check_fingerprint(m.get("tokenizer"), str(path))
    return m
