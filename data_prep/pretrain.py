"""Raw corpus -> Megatron indexed dataset (<prefix>.bin/.idx shards) + manifest.json, on one node or
as a SLURM array of tasks that write one dataset.

The input units (see readers.py: a JSONL file, a parquet row group) are listed in a fixed order and
cut into contiguous ranges by input bytes: first one range per task (array task i of N takes range
i; the same split on every resubmission), then each task's range into its *slots* (1 at -j 1, else
4 per worker, fixed when the task first starts, so that a pool of workers stays busy to the end).
A slot becomes one output shard. Then:

1. process (the workers, in parallel): a slot's units are read in order, once each (JSONL parsed
   with orjson; a parquet row group's columns); every record is validated, filtered, dropped if it
   holds a benchmark problem (--decontaminate), redacted (--redact-pii), hashed (xxh3-128 of the
   final text) and, unless the slot already holds the same text, encoded with o200k_harmony
   (encode_ordinary: special-token text inside code stays plain text) + EOD and appended to the
   slot's .bin. Per unit the hashes and lengths go to .work/units/uNNNNNN.npz and the unit's
   report to uNNNNNN.json (written last: the unit's "done" mark, with the .bin's end offset and a
   checksum of the unit's bytes, so a killed slot resumes after its last intact unit).
2. finalize (whoever finishes last, or `--finalize`): checks that every task ran with the same
   settings and tokenizer, drops exact duplicates across all slots (the first occurrence in unit
   order is kept, as one serial run keeps it; ~24 bytes of hashes per document, no token is read),
   writes each shard's .idx (only the kept documents: a duplicate found across slots stays in its
   .bin, unreferenced, and the manifest counts those tokens), moves the .bin files into place and
   writes manifest.json last: its presence marks the dataset complete.

No pass over the tokens at the end: the serial part is the dedup of the hashes and the indices.
Concatenating the shards in order gives the same documents in the same order for any -j, any
number of tasks and after any resume; only the shard boundaries follow the slots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import socket
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
from data_prep.indexed import write_index
from data_prep.pii import VERSION as PII_VERSION
from data_prep.pii import Redactor
from data_prep.readers import Unit, expand_inputs, list_units, read_unit, text_keys_of
from data_prep.teacher import teacher_summary
from data_prep.util import MAX_EXAMPLES, DropStats, dump_json
from kit.fs import write_text_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: shards per slot, written by the workers; 1: one merge into --shard-tokens shards
ABORT_ENV = "DATA_PREP_ABORT_AFTER_UNITS"  # test hook: die like a killed job after N units
SLOTS_PER_WORKER = 4  # a slot per worker would leave the pool's tail to the slowest one
TOKEN_BYTES = 4  # int32 token ids in the .bin


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
    shards: int = 0  # per task; 0: 1 at -j 1, else SLOTS_PER_WORKER x workers (fixed at the task's first start)
    task: int = 0  # array task index, 0 .. tasks-1
    tasks: int = 1  # array size: every task must be given the same
    finalize: bool = False  # only the last step: check the tasks, dedup, index, manifest
    overwrite: bool = False  # discard this task's work (and a finished dataset) first
    keep_work: bool = False
    progress: bool = True


# ---------------------------------------------------------------------------------------------
# Worker functions (module level so that multiprocessing can pickle them)
# ---------------------------------------------------------------------------------------------

_ENC = None
_MATCHER: tuple[str, Matcher] | None = None
_REPORT: Any = None  # per finished unit: a callable (inline) or a queue (workers) taking (docs, tokens)
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


@dataclass(frozen=True)
class _SlotJob:
    name: str  # tTTTTT-sSSSS
    unit_ids: tuple[int, ...]
    units: tuple[Unit, ...]
    first_part: tuple[bool, ...]  # the unit is its file's first: it checksums the file
    text_key: str | list[str]
    filters: FilterConfig
    decontam: DecontamConfig | None
    redact_pii: bool
    work: str


def _unit_path(work: Path | str, i: int, suffix: str) -> Path:
    return Path(work) / "units" / f"u{i:06d}{suffix}"


def _resume_point(job: _SlotJob, part: Path) -> tuple[int, int]:
    """(units already done, .bin bytes they wrote): the done units are a prefix of the slot's, each
    checked against the .bin (size and checksum of its bytes); the first that does not match and
    everything after it are redone."""
    import xxhash

    done, end = 0, 0
    size = part.stat().st_size if part.exists() else 0
    with open(part, "rb") if size else contextlib.nullcontext() as f:
        for i in job.unit_ids:
            marker = _unit_path(job.work, i, ".json")
            if not marker.exists():
                break
            info = json.loads(marker.read_text())
            start, stop = info["bin"]
            if start != end or stop > size:
                break
            h = xxhash.xxh3_64()
            if stop > start:
                f.seek(start)
                left = stop - start
                while left > 0:
                    block = f.read(min(left, 1 << 24))
                    h.update(block)
                    left -= len(block)
            if h.hexdigest() != info["bin_xxh3"]:
                break
            done, end = done + 1, stop
    for i in job.unit_ids[done:]:  # stale results of units to redo
        for suffix in (".json", ".npz"):
            _unit_path(job.work, i, suffix).unlink(missing_ok=True)
    return done, end


def _process_slot(job: _SlotJob) -> str:
    """Process the slot's units not done yet, appending to .work/slots/<name>.bin.part; the finished
    .bin is renamed into place and <name>.json written last (the slot's "done" mark)."""
    sdir = Path(job.work) / "slots"
    part, final = sdir / f"{job.name}.bin.part", sdir / f"{job.name}.bin"
    if (sdir / f"{job.name}.json").exists():
        return job.name
    if final.exists() and not part.exists():  # killed between the rename and the mark
        os.replace(final, part)
    done, end = _resume_point(job, part)
    seen: set[tuple[int, int]] = set()  # the texts already in this slot: not tokenized again
    for i in job.unit_ids[:done]:
        with np.load(_unit_path(job.work, i, ".npz")) as z:
            seen.update(zip(z["hi"].tolist(), z["lo"].tolist()))
    mode = "r+b" if part.exists() else "wb"
    with open(part, mode) as f:
        f.truncate(end)
        f.seek(end)
        for k in range(done, len(job.unit_ids)):
            _process_unit(job, k, f, seen if job.filters.dedup else None)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, final)
    write_text_atomic(
        sdir / f"{job.name}.json", dump_json({"units": list(job.unit_ids), "bytes": final.stat().st_size})
    )
    return job.name


def _report(docs: int, tokens: int) -> None:
    if callable(_REPORT):
        _REPORT(docs, tokens)
    elif _REPORT is not None:
        _REPORT.put((docs, tokens))


def _process_unit(job: _SlotJob, k: int, out, seen: set | None) -> None:
    """The one pass over the slot's k-th unit: tokens appended to `out`; writes units/uNNNNNN.npz,
    then uNNNNNN.json (the "done" mark)."""
    import xxhash

    from gptoss.tokenizer import EOD_ID

    i, unit = job.unit_ids[k], job.units[k]
    flt = Filter(job.filters)
    matcher = _matcher(job.decontam)
    redact = Redactor().redact_bytes if job.redact_pii else None
    encode = _encoder().encode_to_numpy
    eod = np.array([EOD_ID], dtype=np.int32).tobytes()
    start = out.tell()
    bin_hash = xxhash.xxh3_64()

    contaminated: list[dict[str, Any]] = []
    pii: list[list] = []  # [candidate, kind, count]: rare, so a list beats one array per kind
    drops = DropStats()
    drops_by_lang: dict[str, DropStats] = defaultdict(DropStats)
    served: dict[str, int] = defaultdict(int)  # records whose text came from each key
    hi, lo, line, nbytes, lang_ids, ntok = [], [], [], [], [], []
    langs: dict[str, int] = {}
    n = 0
    digest = xxhash.xxh3_128_digest
    sha = hashlib.sha256() if job.first_part[k] else None
    for rec in read_unit(unit, job.text_key, sha=sha):
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
        h = (int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little"))
        hi.append(h[0])
        lo.append(h[1])
        line.append(rec.line)
        nbytes.append(rec.nbytes)
        lang_ids.append(langs.setdefault(lang, len(langs)))
        if seen is not None:
            if h in seen:  # an earlier copy in this slot: a duplicate whatever finalize finds
                ntok.append(0)
                continue
            seen.add(h)
        # encode_to_numpy with no allowed specials is encode_ordinary (special-token text stays
        # text) without building a Python list; uint32 ids < 2**31 are int32 bytes.
        ids = encode(text, disallowed_special=()).tobytes()
        out.write(ids)
        out.write(eod)
        bin_hash.update(ids)
        bin_hash.update(eod)
        ntok.append(len(ids) // TOKEN_BYTES + 1)
    out.flush()
    tmp = _unit_path(job.work, i, ".tmp.npz")
    np.savez(
        tmp,
        hi=np.array(hi, dtype=np.uint64),
        lo=np.array(lo, dtype=np.uint64),
        line=np.array(line, dtype=np.int64),
        nbytes=np.array(nbytes, dtype=np.int64),
        lang=np.array(lang_ids, dtype=np.int32),
        ntok=np.array(ntok, dtype=np.int64),  # 0: not written (a copy of an earlier document of the slot)
    )
    os.replace(tmp, _unit_path(job.work, i, ".npz"))
    info = {
        "records": n,
        "text_keys": dict(sorted(served.items())),
        "langs": sorted(langs, key=langs.get),
        "dropped": drops.to_dict(),
        "dropped_by_lang": {k: v.to_dict() for k, v in drops_by_lang.items()},
        "decontaminated": contaminated,
        "pii": pii,
        "sha256": None if sha is None else sha.hexdigest(),
        "bin": [start, out.tell()],
        "bin_xxh3": bin_hash.hexdigest(),
    }
    # The json is the unit's "done" mark: written after the others, so its presence means all exist.
    write_text_atomic(_unit_path(job.work, i, ".json"), dump_json(info))
    _report(len(ntok), int(sum(ntok)))


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def _plan(cfg: PretrainConfig, files: list[str], units: list[Unit]) -> dict[str, Any]:
    """Everything the output depends on, the same for every task of an array and every resume."""
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
        "tasks": cfg.tasks,
        "inputs": [{"path": f, "bytes": os.path.getsize(f), "mtime_ns": os.stat(f).st_mtime_ns} for f in files],
        "units": len(units),
    }


def split_by_size(sizes: list[int], n: int) -> list[tuple[int, int]]:
    """`n` contiguous [first, end) index ranges, cut where the running total of `sizes` is nearest
    k/n of the total, each range holding at least one item while there are items left (one huge
    item gets a range of its own; the rest are still spread). Empty ranges only when n > items."""
    m = len(sizes)
    cum = np.concatenate(([0], np.cumsum(np.maximum(np.asarray(sizes, dtype=np.int64), 1))))
    cuts = [0]
    for k in range(1, n):
        target = cum[-1] * k / n
        i = int(np.searchsorted(cum, target))
        if i > 0 and target - cum[i - 1] < cum[i] - target:
            i -= 1
        lo, hi = min(cuts[-1] + 1, m), max(m - (n - k), cuts[-1])
        cuts.append(min(max(i, lo), max(hi, lo)))
    cuts.append(len(sizes))
    return list(zip(cuts[:-1], cuts[1:]))


def _slot_names(task: dict) -> list[str]:
    return [f"t{task['task']:05d}-s{k:04d}" for k in range(len(task["slots"]))]


class _AbortHook:
    """Simulates a kill (tests): DATA_PREP_ABORT_AFTER_UNITS=PHASE:N[@TASK] (PHASE process: units
    done; finalize: output shards indexed) stops the run dead once N of them finished in this process
    (of array task TASK only, when given). The pool is terminated (workers die mid-write and leave
    partial files, as under a real kill) and the CLI kills itself (SIGKILL), skipping every cleanup."""

    def __init__(self, task: int) -> None:
        v = os.environ.get(ABORT_ENV, "")
        spec, _, only = v.partition("@")
        phase, _, n = spec.partition(":")
        if v and (phase not in ("process", "finalize") or not n.isdigit() or only and not only.isdigit()):
            raise ValueError(f"{ABORT_ENV}={v!r}: expected process:N or finalize:N, optionally @TASK")
        active = bool(v) and (not only or int(only) == task)
        self.phase, self.left = (phase, int(n)) if active else ("", 0)

    def tick(self, phase: str) -> None:
        if phase != self.phase:
            return
        self.left -= 1
        if self.left <= 0:
            raise SimulatedKill(f"{ABORT_ENV} reached")


class SimulatedKill(BaseException):
    """Raised by the test hook; the CLI turns it into os._exit so that nothing is cleaned up."""


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, mininterval=1.0, smoothing=0.1)


def _run_slots(jobs: list[_SlotJob], workers: int, on_unit: Callable[[int, int], None]) -> None:
    """The slots inline (one worker) or in a pool of forked workers (they inherit the loaded
    tokenizer: a worker starts in well under a second); `on_unit` sees every finished unit, in
    this process. Slots are separate files, so the order in which they finish cannot reach the output."""
    global _REPORT
    if workers <= 1 or len(jobs) <= 1:
        _REPORT = on_unit
        try:
            for j in jobs:
                _process_slot(j)
        finally:
            _REPORT = None
        return
    ctx = mp.get_context("fork")
    _REPORT = ctx.Queue()
    pool = ctx.Pool(min(workers, len(jobs)))
    try:
        result = pool.map_async(_process_slot, jobs, chunksize=1)
        while True:
            try:
                on_unit(*_REPORT.get(timeout=0.2))
            except queue.Empty:
                if result.ready():
                    break
        while True:  # what the last units reported after the last poll
            try:
                on_unit(*_REPORT.get(timeout=0.05))
            except queue.Empty:
                break
        result.get()
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _REPORT = None


def run(cfg: PretrainConfig, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any] | None:
    """Run array task cfg.task of cfg.tasks (one node: task 0 of 1) and, when every task has
    finished, the last step; returns the manifest (also <output>/manifest.json), or None while
    other tasks have yet to finish."""
    t0 = time.time()
    if not 0 <= cfg.task < cfg.tasks:
        raise ValueError(f"task {cfg.task} of {cfg.tasks}: the task index must be in 0..{cfg.tasks - 1}")
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
    abort = _AbortHook(cfg.task)
    timing: dict[str, float] = {"plan": time.time() - t0}
    if not cfg.finalize:
        task = _claim_task(cfg, out, work, plan, units, log)
        t = time.time()
        _process_task(cfg, task, units, work, abort, log)
        timing["process"] = time.time() - t
        write_text_atomic(work / "tasks" / f"t{cfg.task:05d}.done", dump_json(_task_summary(task, work)))
    tasks = _finished_tasks(cfg, work)
    if len(tasks) < cfg.tasks:
        left = sorted(set(range(cfg.tasks)) - set(tasks))
        if cfg.finalize:
            raise RuntimeError(
                f"{out}: task(s) {_ranges(left)} of {cfg.tasks} have not finished; resubmit them "
                f"(sbatch --array={_ranges(left)} ... --tasks {cfg.tasks}), then run --finalize again"
            )
        log(
            f"task {cfg.task} of {cfg.tasks} done; task(s) {_ranges(left)} still to finish (the last one writes the dataset)"
        )
        return None
    with _finalize_lock(work, cfg) as mine:
        if not mine:
            log(
                f"task {cfg.task}: another task is writing the dataset ({work / 'finalize.lock'}); if none is running, "
                "run the same command with --finalize"
            )
            return None
        t = time.time()
        manifest = _finalize(cfg, out, work, plan, tasks, units, abort)
        timing["finalize"] = time.time() - t
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    _log_summary(cfg, out, files, manifest, time.time() - t0, log)
    log("timing: " + ", ".join(f"{k} {v:.2f} s" for k, v in timing.items()))
    if not manifest["kept"]["docs"]:
        raise RuntimeError(f"no document survived the filters (see {manifest_path}); nothing written but the manifest")
    return manifest


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (sbatch --array's syntax)."""
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def _claim_task(
    cfg: PretrainConfig, out: Path, work: Path, plan: dict, units: list[Unit], log: Callable[[str], None]
) -> dict:
    """This task's record (.work/tasks/tNNNNN.json: its plan, units and slots): the one of an
    interrupted run of the same plan, to resume, or a new one. Refuses an interrupted run of other
    inputs or settings unless --overwrite, which removes this task's work (and a finished dataset)."""
    tdir = work / "tasks"
    path = tdir / f"t{cfg.task:05d}.json"
    if cfg.overwrite:
        _discard(cfg, out, work)
    if path.exists():
        old = json.loads(path.read_text())
        if old["plan"] != plan:
            what = ", ".join(k for k in sorted(set(plan) | set(old["plan"])) if plan.get(k) != old["plan"].get(k))
            raise PlanMismatchError(
                f"{work} holds an interrupted run of task {cfg.task} with other inputs or settings ({what}); "
                "pass --overwrite to discard it"
            )
        log(f"resuming task {cfg.task} of {cfg.tasks} in {work}")
        return old
    first, end = split_by_size([u.size for u in units], cfg.tasks)[cfg.task]
    n = cfg.shards or (1 if cfg.workers <= 1 else SLOTS_PER_WORKER * cfg.workers)
    n = max(1, min(n, end - first))
    slots = [[first + a, first + b] for a, b in split_by_size([u.size for u in units[first:end]], n) if b > a]
    task = {"plan": plan, "task": cfg.task, "units": [first, end], "slots": slots}
    for d in ("tasks", "units", "slots"):
        (work / d).mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dump_json(task))
    return task


def _discard(cfg: PretrainConfig, out: Path, work: Path) -> None:
    """--overwrite: this task's work, and a finished dataset's manifest and shards (its manifest names them)."""
    mpath = out / MANIFEST
    if mpath.exists():
        for p in json.loads(mpath.read_text()).get("prefixes", []):
            for suffix in (".bin", ".idx"):
                (out / f"{p}{suffix}").unlink(missing_ok=True)
        mpath.unlink()
    path = work / "tasks" / f"t{cfg.task:05d}.json"
    if cfg.tasks == 1:
        shutil.rmtree(work, ignore_errors=True)
    elif path.exists():
        task = json.loads(path.read_text())
        for name in _slot_names(task):
            for f in (work / "slots").glob(f"{name}.*"):
                f.unlink()
        for i in range(*task["units"]):
            for suffix in (".json", ".npz"):
                _unit_path(work, i, suffix).unlink(missing_ok=True)
        (work / "tasks" / f"t{cfg.task:05d}.done").unlink(missing_ok=True)
        path.unlink()


def _process_task(
    cfg: PretrainConfig, task: dict, units: list[Unit], work: Path, abort: _AbortHook, log: Callable[[str], None]
) -> None:
    """The one read of every unit of this task not done yet, slot by slot."""
    from gptoss.tokenizer import encoding

    encoding()  # load before forking so that workers share it
    if cfg.decontam is not None:
        _matcher(cfg.decontam)
    first, end = task["units"]
    first_part = {}
    for i, u in enumerate(units):
        first_part.setdefault(u.path, i)
    names = _slot_names(task)
    jobs = [
        _SlotJob(
            name,
            tuple(range(a, b)),
            tuple(units[a:b]),
            tuple(first_part[units[i].path] == i for i in range(a, b)),
            cfg.text_key,
            cfg.filters,
            cfg.decontam,
            cfg.redact_pii,
            str(work),
        )  # fmt: skip
        for name, (a, b) in zip(names, task["slots"])
        if not (work / "slots" / f"{name}.json").exists()
    ]
    workers = max(1, min(cfg.workers, len(jobs)))
    where = f"task {cfg.task} of {cfg.tasks}: " if cfg.tasks > 1 else ""
    log(f"{where}{end - first} of {len(units)} unit(s) in {len(task['slots'])} slot(s), {cfg.workers} worker(s)")
    todo = sum(len(j.unit_ids) for j in jobs)
    bar = _progress(end - first, "prepare", "unit", cfg.progress)
    bar.update(end - first - todo)
    t_tok, count = time.time(), [0, 0]

    def unit_done(docs: int, tokens: int) -> None:
        count[0] += docs
        count[1] += tokens
        bar.update(1)
        rate = count[1] / max(time.time() - t_tok, 1e-9) / 1e3
        bar.set_postfix_str(f"{count[0]:,} docs, {rate:,.0f}k tok/s", refresh=False)
        abort.tick("process")

    _run_slots(jobs, workers, unit_done)
    bar.close()


def _task_summary(task: dict, work: Path) -> dict:
    return {"plan": task["plan"], "task": task["task"], "slots": _slot_names(task)}


def _finished_tasks(cfg: PretrainConfig, work: Path) -> dict[int, dict]:
    tdir = work / "tasks"
    found = {}
    for i in range(cfg.tasks):
        done = tdir / f"t{i:05d}.done"
        if done.exists():
            found[i] = {**json.loads((tdir / f"t{i:05d}.json").read_text()), "done": json.loads(done.read_text())}
    return found


@contextlib.contextmanager
def _finalize_lock(work: Path, cfg: PretrainConfig):
    """Yields True for the one process that may write the dataset: with one task, always; in an
    array, the task that creates .work/finalize.lock (two tasks may finish together), or --finalize
    (which takes over a lock left by a killed task)."""
    if cfg.tasks == 1:
        yield True
        return
    lock = work / "finalize.lock"
    who = f"{socket.gethostname()} pid {os.getpid()} job {os.environ.get('SLURM_JOB_ID', '-')}\n"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if not cfg.finalize:
            yield False
            return
        lock.write_text(who)
    else:
        os.write(fd, who.encode())
        os.close(fd)
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def _check_tasks(cfg: PretrainConfig, out: Path, tasks: dict[int, dict], plan: dict) -> None:
    """Every task ran with the same plan: the one most tasks have (task 0's on a tie), and this command's."""
    plans = [json.dumps(tasks[i]["plan"], sort_keys=True) for i in sorted(tasks)]
    ref_text = max(plans, key=lambda p: (plans.count(p), -plans.index(p)))
    ref = json.loads(ref_text)
    for i in sorted(tasks):
        p = tasks[i]["plan"]
        if p != ref:
            what = ", ".join(k for k in sorted(set(p) | set(ref)) if p.get(k) != ref.get(k))
            raise PlanMismatchError(
                f"{out}: task {i} of {cfg.tasks} ran with other inputs or settings than the others ({what}); "
                f"resubmit it with the others' arguments and --overwrite (sbatch --array={i} ... --tasks {cfg.tasks} --overwrite)"
            )
    if ref != plan:
        what = ", ".join(k for k in sorted(set(plan) | set(ref)) if plan.get(k) != ref.get(k))
        raise PlanMismatchError(
            f"{out}: the tasks ran with other inputs or settings than this command ({what}); "
            "run --finalize with the tasks' arguments"
        )


def _finalize(
    cfg: PretrainConfig, out: Path, work: Path, plan: dict, tasks: dict[int, dict], units: list[Unit], abort: _AbortHook
) -> dict[str, Any]:
    """The last step: tasks checked, exact dedup over every slot, one .idx per shard (kept
    documents only), the .bin files moved into place, the manifest last."""
    _check_tasks(cfg, out, tasks, plan)
    infos = [json.loads(_unit_path(work, i, ".json").read_text()) for i in range(len(units))]
    scans = []
    for i in range(len(units)):
        with np.load(_unit_path(work, i, ".npz")) as z:
            scans.append({k: z[k] for k in z.files})
    dups = _dedup(scans) if cfg.filters.dedup else [np.zeros(len(s["hi"]), dtype=bool) for s in scans]
    for i, (s, dup) in enumerate(zip(scans, dups)):
        if (s["ntok"][~dup] == 0).any():  # a document kept but never written: inconsistent work
            raise RuntimeError(f"{_unit_path(work, i, '.npz')}: a kept document has no tokens; re-run with --overwrite")
    drops, languages = _tally(units, infos, scans, dups)
    slots = [(name, a, b) for i in sorted(tasks) for name, (a, b) in zip(_slot_names(tasks[i]), tasks[i]["slots"])]
    kept = [sum(int((~dups[i]).sum()) for i in range(a, b)) for _, a, b in slots]
    names = iter(
        [cfg.prefix] if sum(k > 0 for k in kept) == 1 else [f"{cfg.prefix}_{n:05d}" for n in range(len(slots))]
    )
    shards, unreferenced = [], 0
    for (slot, a, b), n_kept in zip(slots, kept):
        src = work / "slots" / f"{slot}.bin"
        if not n_kept:
            continue
        prefix = next(names)
        ntok = np.concatenate([scans[i]["ntok"] for i in range(a, b)])
        keep = ~np.concatenate([dups[i] for i in range(a, b)])
        pointers = np.concatenate(([0], np.cumsum(ntok)))[:-1] * TOKEN_BYTES
        size = src.stat().st_size if src.exists() else (out / f"{prefix}.bin").stat().st_size
        if size != int(ntok.sum()) * TOKEN_BYTES:
            raise RuntimeError(
                f"{src}: {size} bytes, its units say {int(ntok.sum()) * TOKEN_BYTES}; re-run with --overwrite"
            )
        write_index(out / f"{prefix}.idx", ntok[keep], pointers[keep])
        if src.exists():  # else moved by an earlier, interrupted finalize
            os.replace(src, out / f"{prefix}.bin")
        tokens = int(ntok[keep].sum())
        unreferenced += int(ntok.sum()) - tokens
        shards.append({"prefix": prefix, "docs": n_kept, "tokens": tokens})
        abort.tick("finalize")
    manifest = _manifest(cfg, units, infos, dups, drops, languages, shards, plan)
    manifest["unreferenced_tokens"] = unreferenced
    write_text_atomic(out / MANIFEST, dump_json(manifest))
    return manifest


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
        idx = np.flatnonzero(dup)  # counted with numpy: a corpus may hold tens of millions of copies
        if idx.size:
            for j in idx[:MAX_EXAMPLES]:  # the first locations (DropStats keeps MAX_EXAMPLES)
                drops.add("duplicate", 0, _loc(units[i], int(s["line"][j])), docs=0)
            drops.add("duplicate", int(s["nbytes"][idx].sum()), None, docs=int(idx.size))
            lang_of, bytes_of = s["lang"][idx], s["nbytes"][idx]
            for j, lang in enumerate(info["langs"]):
                if (sel := lang_of == j).any():
                    lang_drops[lang].add("duplicate", int(bytes_of[sel].sum()), None, docs=int(sel.sum()))
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


def _manifest(
    cfg: PretrainConfig,
    units: list[Unit],
    infos: list[dict],
    dups: list[np.ndarray],
    drops: DropStats,
    languages: dict,
    shards: list[dict],
    plan: dict,
) -> dict[str, Any]:
    from gptoss.tokenizer import fingerprint

    files = [i["path"] for i in plan["inputs"]]
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
            {
                "path": f["path"],
                "bytes": f["bytes"],
                "sha256": sha.get(f["path"]),
                "text_keys": dict(sorted(served[f["path"]].items())),
            }
            for f in plan["inputs"]
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


def _log_summary(
    cfg: PretrainConfig, out: Path, files: list[str], manifest: dict, dt: float, log: Callable[[str], None]
) -> None:
    kept_docs, kept_tokens = manifest["kept"]["docs"], manifest["kept"]["tokens"]
    records, shards, decontam, dropped = (
        manifest["records"],
        manifest["shards"],
        manifest["decontamination"],
        manifest["dropped"],
    )
    served = {i["path"]: i["text_keys"] for i in manifest["inputs"]}
    log(
        f"{out}: kept {kept_docs:,} of {records:,} documents, {kept_tokens:,} tokens in {len(shards)} shard(s), "
        f"{dt:.1f} s ({kept_tokens / max(dt, 1e-9):,.0f} tokens/s)"
    )
    if len(manifest["plan"]["text_key"]) > 1:
        for f in files:
            log(
                f"  {f}: text from " + (", ".join(f"{k} {c:,}" for k, c in served[f].items()) or "no key (all missing)")
            )
    if decontam is not None:
        for line in _decontam_lines(decontam):
            log(line)
    if manifest["pii"] is not None:
        kinds = manifest["pii"]["kinds"]
        log(
            "  redacted: "
            + (", ".join(f"{k} {v['replaced']:,} in {v['docs']:,} doc(s)" for k, v in kinds.items()) or "nothing found")
        )
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
        lines.append(
            f"    {bench}: {len(ts)} of {src['problems']} task(s) found, {len(src['exempt'])} string(s) exempt as too short"
        )
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
