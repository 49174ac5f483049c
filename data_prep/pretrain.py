"""Raw corpus -> Megatron indexed dataset (<prefix>.bin/.idx) + manifest.json.

One parallel pass over ordered work units (see readers.py), then dedup and a merge:

1. process: each worker reads one unit once (JSONL parsed with orjson; a parquet row group's
   columns), and for every record validates, filters, drops benchmark copies (--decontaminate),
   replaces secrets (--redact-pii), hashes the final text (xxh3-128) and encodes it with
   o200k_harmony (encode_ordinary: special-token text inside code stays plain text) + EOD into a
   per-unit indexed dataset. JSONL inputs are checksummed as they are read.
2. dedup (main process): the first occurrence of each hash, in unit order, is kept. Done on numpy
   arrays of hashes, ~24 bytes per candidate document and no Python set. Cross-unit duplicates are
   tokenized once in vain: cheaper than reading and parsing every input twice (what an earlier
   two-pass version did) unless most of the corpus repeats itself.
3. merge: the kept documents of the unit datasets are copied, in unit order, into the output prefix
   (one, or several of about --shard-tokens tokens each; runs of kept documents are copied as
   single byte ranges), then manifest.json is written last.

Every step writes its results under <output>/.work/ with atomic renames, and skips what is already
there, so a killed run continues where it stopped. Nothing depends on the worker count or on the
order in which workers finish, so the output is byte-identical for any -j and after any resume.
"""

from __future__ import annotations

import hashlib
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

from data_prep.decontam import DecontamConfig, Matcher
from data_prep.filters import Filter, FilterConfig, language
from data_prep.pii import VERSION as PII_VERSION
from data_prep.pii import Redactor
from data_prep.readers import Unit, expand_inputs, list_units, read_unit, text_keys_of
from data_prep.teacher import teacher_summary
from data_prep.util import DropStats, dump_json
from kit.fs import write_text_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ABORT_ENV = "DATA_PREP_ABORT_AFTER_UNITS"  # test hook: die like a killed job after N units


class PlanMismatchError(RuntimeError):
    """The output directory holds work or a dataset from different inputs or settings."""


@dataclass
class PretrainConfig:
    inputs: list[str]
    output: Path
    text_key: str | list[str] = "content"  # several ("content,text"): per record, the first one present
    filters: FilterConfig = field(default_factory=FilterConfig)
    decontam: DecontamConfig | None = None  # drop documents holding benchmark problems (decontam.py)
    redact_pii: bool = False  # e-mails, IPs, keys, passwords -> placeholders before tokenizing (pii.py)
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
_MATCHER: tuple[str, Matcher] | None = None
MAX_TASK_LOCATIONS = 1000  # per benchmark task in the manifest (the count stays exact)


def _encoder():
    global _ENC
    if _ENC is None:
        from gptoss.tokenizer import encoding

        _ENC = encoding()
    return _ENC


def _matcher(dcfg: DecontamConfig | None) -> Matcher | None:
    """The decontamination automaton, built once per process (forked workers inherit the parent's)."""
    global _MATCHER
    if dcfg is None:
        return None
    key = dump_json(dcfg.to_dict())
    if _MATCHER is None or _MATCHER[0] != key:
        _MATCHER = (key, Matcher(dcfg))
    return _MATCHER[1]


def _process_unit(job: tuple) -> tuple[int, int, int, int]:
    """The one pass over one unit: writes units/uNNNNNN.{bin,idx,npz,json} (json last, the "done"
    marker); returns (unit index, records, candidate documents, their tokens)."""
    import xxhash
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from gptoss.tokenizer import EOD_ID

    i, unit, text_key, fcfg, dcfg, redact_pii, work, checksum = job
    flt = Filter(fcfg)
    matcher = _matcher(dcfg)
    redact = Redactor().redact_bytes if redact_pii else None
    enc = _encoder()
    encode = enc.encode_to_numpy
    eod = np.array([EOD_ID], dtype=np.uint32).tobytes()
    base = Path(work) / "units" / f"u{i:06d}"
    tmp_bin, tmp_idx = f"{base}.bin.tmp", f"{base}.idx.tmp"
    builder = IndexedDatasetBuilder(tmp_bin, dtype=np.int32)
    data_file, seq_lengths, doc_indices = builder.data_file, builder.sequence_lengths, builder.document_indices

    contaminated: list[dict[str, Any]] = []
    pii: list[list] = []  # [candidate, kind, count]: rare, so a list beats one array per kind
    drops = DropStats()
    drops_by_lang: dict[str, DropStats] = defaultdict(DropStats)
    served: dict[str, int] = defaultdict(int)  # records whose text came from each key
    hi, lo, line, nbytes, lang_ids = [], [], [], [], []
    langs: dict[str, int] = {}
    n = 0
    digest = xxhash.xxh3_128_digest
    sha = hashlib.sha256() if checksum else None
    for rec in read_unit(unit, text_key, sha=sha):
        n += 1
        if rec.key is not None:
            served[rec.key] += 1
        if rec.error is not None:
            drops.add(rec.error, rec.nbytes, rec.loc)
            drops_by_lang["(unparsed)"].add(rec.error, rec.nbytes, None)
            continue
        lang = language(rec.meta)
        b = rec.data
        reason = flt.check(rec.text, rec.nbytes, rec.meta, lang, b)
        if reason is not None:
            drops.add(reason, rec.nbytes, rec.loc)
            drops_by_lang[lang].add(reason, rec.nbytes, None)
            continue
        if matcher is not None and (hits := matcher.find(b)):
            drops.add("decontaminated", rec.nbytes, rec.loc)
            drops_by_lang[lang].add("decontaminated", rec.nbytes, None)
            found = sorted({(h.benchmark, h.task_id, h.field) for h in hits})
            contaminated.append({"row": rec.line, "hits": [list(h) for h in found]})
            continue
        text = rec.text
        if redact is not None:
            red, counts = redact(b)
            if counts:
                b, text = red, red.decode("utf-8", "surrogatepass")
                pii += [[len(hi), kind, c] for kind, c in sorted(counts.items())]
        d = digest(b)
        hi.append(int.from_bytes(d[:8], "little"))
        lo.append(int.from_bytes(d[8:], "little"))
        line.append(rec.line)
        nbytes.append(rec.nbytes)
        lang_ids.append(langs.setdefault(lang, len(langs)))
        # encode_to_numpy with no allowed specials is encode_ordinary (special-token text stays
        # text) without building a Python list. Written straight into the builder's file (what
        # add_document does, without its extra array copy): uint32 ids < 2**31 are int32 bytes.
        ids = encode(text, disallowed_special=())
        data_file.write(ids.tobytes())
        data_file.write(eod)
        seq_lengths.append(ids.size + 1)
        doc_indices.append(len(seq_lengths))
    builder.finalize(tmp_idx)
    os.replace(tmp_bin, f"{base}.bin")
    os.replace(tmp_idx, f"{base}.idx")
    tmp = base.with_name(base.name + ".tmp.npz")
    np.savez(
        tmp,
        hi=np.array(hi, dtype=np.uint64),
        lo=np.array(lo, dtype=np.uint64),
        line=np.array(line, dtype=np.int64),
        nbytes=np.array(nbytes, dtype=np.int64),
        lang=np.array(lang_ids, dtype=np.int32),
        ntok=np.array(seq_lengths, dtype=np.int64),
    )
    os.replace(tmp, base.with_suffix(".npz"))
    info = {
        "records": n,
        "text_keys": dict(sorted(served.items())),
        "langs": sorted(langs, key=langs.get),
        "dropped": drops.to_dict(),
        "dropped_by_lang": {k: v.to_dict() for k, v in drops_by_lang.items()},
        "decontaminated": contaminated,
        "pii": pii,
        "sha256": None if sha is None else sha.hexdigest(),
    }
    # The json is the unit's "done" marker: written after the others, so its presence means all exist.
    write_text_atomic(base.with_suffix(".json"), dump_json(info))
    return i, n, len(seq_lengths), int(sum(seq_lengths))


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def _plan(cfg: PretrainConfig, files: list[str], units: list[Unit]) -> dict[str, Any]:
    """Everything the output depends on. A resumed run must have the same plan."""
    from gptoss.tokenizer import fingerprint

    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": fingerprint(),
        "text_key": list(text_keys_of(cfg.text_key)),
        "filters": cfg.filters.to_dict(),
        # the problem files' checksums too: a resumed run must search for the same needles
        "decontam": None if cfg.decontam is None else _matcher(cfg.decontam).summary(),
        "redact_pii": PII_VERSION if cfg.redact_pii else None,
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
    """Simulates a kill (tests): DATA_PREP_ABORT_AFTER_UNITS=PHASE:N (PHASE process: units done;
    merge: output shards written) stops the run dead once N of them finished in this process. The pool is terminated
    (workers die mid-write and leave temporary files, as under a real kill) and the CLI exits with
    os._exit(75), skipping every cleanup."""

    def __init__(self) -> None:
        v = os.environ.get(ABORT_ENV, "")
        phase, _, n = v.partition(":")
        if v and (phase not in ("process", "merge") or not n.isdigit()):
            raise ValueError(f"{ABORT_ENV}={v!r}: expected process:N or merge:N")
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


def _append(builder, prefix: str, keep: np.ndarray) -> None:
    """The documents of one unit dataset where `keep` is set, appended to `builder`: runs of kept
    documents are copied as byte ranges. Like IndexedDatasetBuilder.add_index, without its
    gc.collect(), which costs ~0.6 s per call in a process that has imported torch: thousands of
    units would spend hours collecting garbage."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    index = _IndexReader(prefix + ".idx", multimodal=False)
    if index.dtype != builder.dtype:
        raise RuntimeError(f"{prefix}.idx has dtype {index.dtype}, expected {builder.dtype}")
    lengths = np.asarray(index.sequence_lengths).astype(np.int64)
    pointers = np.asarray(index.sequence_pointers).astype(np.int64)
    if len(lengths) != len(keep) or not np.array_equal(np.asarray(index.document_indices), np.arange(len(keep) + 1)):
        raise RuntimeError(f"{prefix}: unit dataset does not match its scan; re-run with --overwrite")
    del index
    offset = len(builder.sequence_lengths)
    kept = lengths[keep]
    builder.sequence_lengths.extend(kept.tolist())
    builder.document_indices.extend((offset + np.arange(1, kept.size + 1)).tolist())
    ends = pointers + lengths * np.dtype(builder.dtype).itemsize
    # runs of consecutive kept documents, as [first, end) index pairs
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.astype(np.int8), [0]))))
    with open(prefix + ".bin", "rb") as f:
        for a, b in zip(edges[::2], edges[1::2]):
            f.seek(int(pointers[a]))
            left = int(ends[b - 1] - pointers[a])
            while left > 0:
                block = f.read(min(left, 1 << 22))
                if not block:
                    raise RuntimeError(f"{prefix}.bin is shorter than its index says; re-run with --overwrite")
                builder.data_file.write(block)
                left -= len(block)


def output_prefixes(out: Path, prefix: str, n_shards: int) -> list[Path]:
    if n_shards <= 1:
        return [out / prefix]
    return [out / f"{prefix}_{k:05d}" for k in range(n_shards)]


def run(cfg: PretrainConfig, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Build the dataset described by `cfg`; returns the manifest (also written to <output>/manifest.json).

    One pass over every unit (read, filter, decontaminate, redact, hash, tokenize: `_process_units`,
    resumable per unit), then exact dedup and the tallies (`_tally`), the shards in unit order
    (`_merge`), and the manifest last: its presence marks the dataset complete."""
    t0 = time.time()
    out = Path(cfg.output).absolute()
    work = out / ".work"
    files = expand_inputs(cfg.inputs)
    units = list_units(files)
    plan = _plan(cfg, files, units)
    manifest_path = out / MANIFEST
    complete = _claim_output(cfg, out, work, plan, log)
    if complete is not None:
        return complete
    abort = _AbortHook()
    _process_units(cfg, files, units, work, abort, log)
    udir = work / "units"
    infos = [json.loads((udir / f"u{i:06d}.json").read_text()) for i in range(len(units))]
    scans = []
    for i in range(len(units)):
        with np.load(udir / f"u{i:06d}.npz") as z:
            scans.append({k: z[k] for k in z.files})
    dups = _dedup(scans) if cfg.filters.dedup else [np.zeros(len(s["hi"]), dtype=bool) for s in scans]
    drops, languages = _tally(units, infos, scans, dups)
    shards = _merge(cfg, out, units, udir, scans, dups, abort)
    manifest = _manifest(cfg, files, units, infos, dups, drops, languages, shards, plan)
    write_text_atomic(manifest_path, dump_json(manifest))
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    _log_summary(cfg, out, files, manifest, time.time() - t0, log)
    if not manifest["kept"]["docs"]:
        raise RuntimeError(f"no document survived the filters (see {manifest_path}); nothing written but the manifest")
    return manifest


def _claim_output(cfg: PretrainConfig, out: Path, work: Path, plan: dict, log: Callable[[str], None]) -> dict | None:
    """The finished manifest when `out` already holds this very dataset; else prepare `work` (fresh,
    or an interrupted run of the same plan to resume) and return None. Refuses a dataset or an
    interrupted run of other inputs or settings unless --overwrite (which removes only those)."""
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
    (work / "units").mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan_path, dump_json(plan))
    return None


def _process_units(
    cfg: PretrainConfig, files: list[str], units: list[Unit], work: Path, abort: _AbortHook, log: Callable[[str], None]
) -> None:
    """The one read of every unit not done yet: read, filter, decontaminate, redact, hash, tokenize."""
    from gptoss.tokenizer import encoding

    encoding()  # load before forking so that workers share it
    workers = max(1, cfg.workers)
    log(f"{len(files)} input file(s) in {len(units)} unit(s), {workers} worker(s)")
    # Largest units first: the pool's tail is shorter when the big pieces start early.
    by_size = sorted(range(len(units)), key=lambda i: (-units[i].size, i))
    first_part = {}
    for i, u in enumerate(units):
        first_part.setdefault(u.path, i)
    udir = work / "units"
    todo = [i for i in by_size if not (udir / f"u{i:06d}.json").exists()]
    bar = _progress(len(units), "prepare", "unit", cfg.progress)
    bar.update(len(units) - len(todo))
    t_tok, tok_count = time.time(), [0, 0]

    def unit_done(res: tuple[int, int, int, int]) -> None:
        tok_count[0] += res[2]
        tok_count[1] += res[3]
        bar.update(1)
        rate = tok_count[1] / max(time.time() - t_tok, 1e-9) / 1e3
        bar.set_postfix_str(f"{tok_count[0]:,} docs, {rate:,.0f}k tok/s", refresh=False)
        abort.tick("process")

    jobs = [
        (i, units[i], cfg.text_key, cfg.filters, cfg.decontam, cfg.redact_pii, str(work), first_part[units[i].path] == i)
        for i in todo
    ]
    _run_jobs(_process_unit, jobs, workers, unit_done)
    bar.close()


def _tally(units: list[Unit], infos: list[dict], scans: list[dict], dups: list[np.ndarray]) -> tuple[DropStats, dict]:
    """Drops (the units' own, plus the duplicates) and kept/dropped documents per language."""
    drops = DropStats()
    lang_drops: dict[str, DropStats] = defaultdict(DropStats)
    languages: dict[str, dict[str, Any]] = {}
    for i, info in enumerate(infos):
        drops.merge(info["dropped"])
        for lang, d in info["dropped_by_lang"].items():
            lang_drops[lang].merge(d)
        s, dup = scans[i], dups[i]
        for j in np.flatnonzero(dup):
            lang = info["langs"][s["lang"][j]]
            drops.add("duplicate", int(s["nbytes"][j]), _loc(units[i], int(s["line"][j])))
            lang_drops[lang].add("duplicate", int(s["nbytes"][j]), None)
        for j, lang in enumerate(info["langs"]):
            sel = ~dup & (s["lang"] == j)
            if sel.any():
                k = languages.setdefault(lang, {"kept": {"docs": 0, "tokens": 0}, "dropped": {}})
                k["kept"]["docs"] += int(sel.sum())
                k["kept"]["tokens"] += int(s["ntok"][sel].sum())
    for lang, d in lang_drops.items():
        k = languages.setdefault(lang, {"kept": {"docs": 0, "tokens": 0}, "dropped": {}})
        k["dropped"] = {r: {"docs": v["docs"], "bytes": v["bytes"]} for r, v in d.to_dict().items()}
    return drops, languages


def _merge(
    cfg: PretrainConfig, out: Path, units: list[Unit], udir: Path, scans: list[dict], dups: list[np.ndarray], abort: _AbortHook
) -> list[dict[str, Any]]:
    """The kept documents of every unit, in unit order, into shards of about cfg.shard_tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    unit_docs = [int((~d).sum()) for d in dups]
    unit_tokens = [int(s["ntok"][~d].sum()) for s, d in zip(scans, dups)]
    groups: list[list[int]] = [[]]
    acc = 0
    for i in range(len(units)):
        if unit_docs[i] == 0:
            continue
        if cfg.shard_tokens and acc >= cfg.shard_tokens:
            groups.append([])
            acc = 0
        groups[-1].append(i)
        acc += unit_tokens[i]
    prefixes = output_prefixes(out, cfg.prefix, len(groups)) if sum(unit_docs) else []
    shards = []
    for group, prefix in zip(groups, prefixes):
        tmp_bin, tmp_idx = f"{prefix}.bin.tmp", f"{prefix}.idx.tmp"
        builder = IndexedDatasetBuilder(tmp_bin, dtype=np.int32)
        for i in group:
            _append(builder, str(udir / f"u{i:06d}"), ~dups[i])
        builder.finalize(tmp_idx)
        os.replace(tmp_bin, f"{prefix}.bin")
        os.replace(tmp_idx, f"{prefix}.idx")
        shards.append(
            {
                "prefix": prefix.name,
                "docs": sum(unit_docs[i] for i in group),
                "tokens": sum(unit_tokens[i] for i in group),
            }
        )
        abort.tick("merge")
    return shards


def _manifest(
    cfg: PretrainConfig,
    files: list[str],
    units: list[Unit],
    infos: list[dict],
    dups: list[np.ndarray],
    drops: DropStats,
    languages: dict,
    shards: list[dict],
    plan: dict,
) -> dict[str, Any]:
    from gptoss.tokenizer import fingerprint

    sha = {units[i].path: infos[i]["sha256"] for i in range(len(units)) if infos[i]["sha256"]}
    served: dict[str, dict[str, int]] = {f: {} for f in files}
    for u, info in zip(units, infos):
        for key, c in info["text_keys"].items():
            served[u.path][key] = served[u.path].get(key, 0) + c
    records = sum(info["records"] for info in infos)
    decontam = _decontam_report(cfg, units, infos)
    dropped = drops.to_dict()
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": fingerprint(),
        "eod_id": _eod(),
        "dtype": "int32",
        "prefixes": [s["prefix"] for s in shards],
        "shards": shards,
        "inputs": [
            {"path": f, "bytes": os.path.getsize(f), "sha256": sha.get(f), "text_keys": dict(sorted(served[f].items()))}
            for f in files
        ],
        "records": records,
        "kept": {"docs": sum(s["docs"] for s in shards), "tokens": sum(s["tokens"] for s in shards)},
        "dropped": dropped,
        "dropped_docs": sum(v["docs"] for v in dropped.values()),
        "languages": {k: languages[k] for k in sorted(languages)},
        "decontamination": decontam,
        "pii": _pii_report(cfg, infos, dups),
        "teacher_data": teacher_summary(files),  # inputs written by `inference generate`: teacher, sampling
        "plan": plan,
    }


def _log_summary(cfg: PretrainConfig, out: Path, files: list[str], manifest: dict, dt: float, log: Callable[[str], None]) -> None:
    kept_docs, kept_tokens = manifest["kept"]["docs"], manifest["kept"]["tokens"]
    records, shards, decontam, dropped = manifest["records"], manifest["shards"], manifest["decontamination"], manifest["dropped"]
    served = {i["path"]: i["text_keys"] for i in manifest["inputs"]}
    log(
        f"{out}: kept {kept_docs:,} of {records:,} documents, {kept_tokens:,} tokens in {len(shards)} shard(s), "
        f"{dt:.1f} s ({kept_tokens / max(dt, 1e-9):,.0f} tokens/s)"
    )
    if len(manifest["plan"]["text_key"]) > 1:
        for f in files:
            log(f"  {f}: text from " + (", ".join(f"{k} {c:,}" for k, c in served[f].items()) or "no key (all missing)"))
    if decontam is not None:
        for line in _decontam_lines(decontam):
            log(line)
    if manifest["pii"] is not None:
        kinds = manifest["pii"]["kinds"]
        log("  redacted: " + (", ".join(f"{k} {v['replaced']:,} in {v['docs']:,} doc(s)" for k, v in kinds.items()) or "nothing found"))
    for reason, v in dropped.items():
        log(f"  dropped {v['docs']:,} ({reason}), e.g. {', '.join(v['examples'][:3])}")


def _decontam_report(cfg: PretrainConfig, units: list[Unit], infos: list[dict]) -> dict[str, Any] | None:
    """Per benchmark and task id: the documents dropped (count, which fields matched, file and row)."""
    if cfg.decontam is None:
        return None
    m = _matcher(cfg.decontam)
    tasks: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in m.sources}
    docs = 0
    for u, info in zip(units, infos):  # unit order: the same report for any -j
        for c in info["decontaminated"]:
            docs += 1
            seen = set()
            for bench, task, fname in c["hits"]:
                t = tasks[bench].setdefault(task, {"docs": 0, "fields": {}, "locations": []})
                t["fields"][fname] = t["fields"].get(fname, 0) + 1
                if (bench, task) in seen:
                    continue
                seen.add((bench, task))
                t["docs"] += 1
                if len(t["locations"]) < MAX_TASK_LOCATIONS:
                    t["locations"].append({"file": u.path, "row": c["row"]})
    return {
        **m.summary(),
        "dropped_docs": docs,
        "tasks": {b: dict(sorted(ts.items(), key=lambda kv: _task_order(kv[0]))) for b, ts in tasks.items()},
    }


def _pii_report(cfg: PretrainConfig, infos: list[dict], dups: list[np.ndarray]) -> dict[str, Any] | None:
    """Replacements per kind in the kept documents: {kind: {docs, replaced}}."""
    if not cfg.redact_pii:
        return None
    kinds: dict[str, dict[str, int]] = {}
    for info, dup in zip(infos, dups):
        for j, kind, c in info["pii"]:
            if dup[j]:
                continue
            k = kinds.setdefault(kind, {"docs": 0, "replaced": 0})
            k["docs"] += 1
            k["replaced"] += c
    return {"version": PII_VERSION, "kinds": dict(sorted(kinds.items()))}


def _task_order(task_id: str) -> tuple:
    """HumanEval/2 before HumanEval/10."""
    head, _, num = task_id.rpartition("/")
    return (head, int(num), "") if num.isdigit() else (task_id, -1, task_id)


def _decontam_lines(rep: dict[str, Any]) -> list[str]:
    lines = [f"  decontamination: dropped {rep['dropped_docs']:,} document(s)"]
    for bench, ts in rep["tasks"].items():
        src = rep["sources"][bench]
        lines.append(f"    {bench}: {len(ts)} of {src['problems']} task(s) found, {len(src['exempt'])} string(s) exempt as too short")
        for task, t in ts.items():
            where = ", ".join(f"{x['file']}:{x['row']}" for x in t["locations"][:3])
            fields = ", ".join(f"{k} {v}" for k, v in sorted(t["fields"].items()))
            lines.append(f"      {task}: {t['docs']} doc(s) ({fields}) e.g. {where}")
    return lines


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
