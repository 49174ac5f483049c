"""A teacher of another tokenizer, aligned to the student's tokens: the targets of cross-tokenizer
distillation by Approximate Likelihood Matching (ALM: Minixhofer, Vulić and Ponti, 2025; why this
method: recipes/alm.py).

The teacher (StarCoder, say: 49k tokens) and the student (gpt-oss: o200k, 201k tokens) cut the same
bytes into different tokens. Where both cut at the same byte, the text between two such common
boundaries is a *chunk*, and both models give it a likelihood: the sum of their token
log-probabilities over the chunk. ALM trains the student's chunk likelihoods towards the teacher's.
All it needs from the teacher is one log-probability per teacher token and each token's byte span
(`python -m inference score`, inference/score.py); this module turns those into one float per
student token, stored beside the indexed dataset:

    teacher bytes   |def| add|(a|,| b|):|
    student bytes   |def| add|(|a|,| b|):|
    common ends         ^    ^       ^  ^   (after "def", " add", "(a", ", b", "):")
    target[j]       NaN inside a chunk; at the chunk's last student token, the teacher's
                    log-likelihood of the chunk (<= 0); +inf at the last token of a span that has
                    no target (a chunk holding a teacher token it could not score, such as the
                    first token of a document for a teacher without BOS; the EOD token). +inf
                    still ends the span: the next chunk starts after it.

The targets of a dataset `data/<name>/<prefix>` lie in `data/<name>/teacher/<prefix>.{bin,idx}`:
the same sequence lengths and document index as the text, so megatron-core's GPTDataset index
arithmetic finds the targets of a sample where it finds its tokens. The .bin holds float32 values
but the .idx names int32: GPTDataset concatenates a sample's parts as int64, which keeps int32 bit
patterns exactly (a float dtype would be truncated to integers); the reader views them back as
float32. `teacher/manifest.json` names the method, the teacher, both tokenizers and the scores.

A document of the dataset finds its scores by the SHA-256 of its text as tokenized (so filters,
dedup and decontamination are the text's: the targets follow the documents that were kept); a
document the teacher did not score gets no target (all +inf at its chunk ends: it still trains the
LM loss), and the manifest counts it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.indexed import read_index, write_index
from data_prep.util import dump_json
from kit.fs import atomic_file, write_text_atomic

METHOD = "alm-chunks-v1"  # the targets' meaning (above); recipes/alm.py refuses any other
SCORE_KIND = "inference-score"  # the `kind` of a scores file's manifest (inference/score.py)
TARGETS_KIND = "data_prep-teacher-targets"
TEACHER_DIR = "teacher"
NO_TARGET = np.float32(np.inf)


def targets_prefix(prefix: str | os.PathLike) -> str:
    """data/<name>/<prefix> -> data/<name>/teacher/<prefix> (its .bin/.idx hold the targets)."""
    p = Path(prefix)
    return str(p.parent / TEACHER_DIR / p.name)


def targets_manifest_path(dataset_dir: str | os.PathLike) -> Path:
    return Path(dataset_dir) / TEACHER_DIR / "manifest.json"


def common_ends(a_ends: np.ndarray, b_ends: np.ndarray) -> np.ndarray:
    """The byte ends where both tokenizations cut (the chunks' ends), sorted."""
    return np.intersect1d(np.asarray(a_ends, dtype=np.int64), np.asarray(b_ends, dtype=np.int64), assume_unique=True)


def chunk_sums(ends: np.ndarray, logprobs: np.ndarray, chunk_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood of each chunk, whether it holds an unscored token) for one tokenization:
    `ends` each token's byte end, `logprobs` each token's log-prob (NaN: none), `chunk_ends` a
    subset of `ends`. Differences of a cumulative sum; NaNs told apart by a cumulative count."""
    ends = np.asarray(ends, dtype=np.int64)
    lp = np.asarray(logprobs, dtype=np.float64)
    last = np.searchsorted(ends, chunk_ends)  # each chunk's last token
    first = np.concatenate(([0], last[:-1] + 1))
    csum = np.concatenate(([0.0], np.cumsum(np.nan_to_num(lp, nan=0.0))))
    cnan = np.concatenate(([0], np.cumsum(np.isnan(lp))))
    return csum[last + 1] - csum[first], (cnan[last + 1] - cnan[first]) > 0


def chunk_targets(student_ends: np.ndarray, teacher_ends: np.ndarray, teacher_logprobs: np.ndarray) -> np.ndarray:
    """One float32 per student token (the encoding above), for one document without its EOD.

    student_ends / teacher_ends: each token's byte end in the document (increasing, the last equal
    to the document's length); teacher_logprobs: log p(token | the tokens before it), NaN where the
    teacher gave none."""
    s = np.asarray(student_ends, dtype=np.int64)
    out = np.full(len(s), np.nan, dtype=np.float32)
    if not len(s) or not len(teacher_ends):
        return out
    common = common_ends(s, teacher_ends)
    sums, unscored = chunk_sums(teacher_ends, teacher_logprobs, common)
    out[np.searchsorted(s, common)] = np.where(unscored, NO_TARGET, sums).astype(np.float32)
    return out


class StudentBytes:
    """Byte lengths of o200k tokens (cached: a corpus repeats a small part of the vocabulary)."""

    def __init__(self) -> None:
        from gptoss.tokenizer import encoding

        self._enc = encoding()
        self._len: dict[int, int] = {}

    def token_bytes(self, ids: np.ndarray) -> bytes:
        return b"".join(self._enc.decode_single_token_bytes(int(i)) for i in ids)

    def ends(self, ids: np.ndarray) -> np.ndarray:
        lens = [self._len.get(int(i)) for i in ids]
        for k, n in enumerate(lens):
            if n is None:
                i = int(ids[k])
                lens[k] = self._len[i] = len(self._enc.decode_single_token_bytes(i))
        return np.cumsum(np.asarray(lens, dtype=np.int64))


def read_scores(paths: list[str | os.PathLike]) -> tuple[dict[str, Any], dict[str, dict]]:
    """(manifest, rows by the SHA-256 of the scored text) of the files written by `inference score
    --out` (one per corpus shard, say): one teacher, tokenizer and method across them, or ValueError."""
    manifests, rows = [], {}
    for path in paths:
        m, r = _read_one_scores(path)
        same = ("teacher", "teacher_tokenizer", "method")
        if manifests and any(m["plan"].get(k) != manifests[0]["plan"].get(k) for k in same):
            raise ValueError(
                f"{path}: scored by {m['plan'].get('teacher')} ({m['plan'].get('teacher_tokenizer')}), {paths[0]} by "
                f"{manifests[0]['plan'].get('teacher')} ({manifests[0]['plan'].get('teacher_tokenizer')}): one teacher per dataset"
            )
        manifests.append(m)
        rows.update(r)
    first = manifests[0]
    return {**first, "plan": {**first["plan"], "files": [m["plan"] for m in manifests]}}, rows


def _read_one_scores(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict]]:
    from data_prep.teacher import generation_manifest_path

    path = Path(path)
    mpath = generation_manifest_path(path)
    if not mpath.is_file():
        raise ValueError(
            f"{path}: no {mpath.name} beside it: teacher scores come from `python -m inference score ... --out {path}`"
        )
    m = json.loads(mpath.read_text())
    if m.get("kind") != SCORE_KIND:
        raise ValueError(f"{mpath} is not a manifest of `inference score --out`: give the scores file of that command")
    if m.get("method") != METHOD:
        raise ValueError(
            f"{path}: scores for method {m.get('method')!r}, this kit aligns {METHOD!r}: score the corpus again"
        )
    if not m.get("complete"):
        raise ValueError(
            f"{path}: scoring has not finished ({m.get('rows')} of {m.get('rows_expected')} documents): rerun the same "
            "`inference score` command to complete it"
        )
    rows: dict[str, dict] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["sha256"]] = r
    return m, rows


def _targets_plan(dataset: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": METHOD,
        "dataset_plan": dataset.get("plan"),
        "shards": dataset["shards"],
        "student_tokenizer": dataset["tokenizer"],
        "scores": scores["plan"],
    }


def attach(
    dataset_dir: str | os.PathLike, scores_paths: list[str | os.PathLike], log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write the teacher targets of every shard of the dataset in `dataset_dir` from the scores in
    `scores_paths`; returns teacher/manifest.json's content. Done already for the same dataset and
    scores: nothing is written again."""
    from data_prep.pretrain import read_manifest
    from gptoss.tokenizer import EOD_ID

    out = Path(dataset_dir)
    dataset = read_manifest(out)
    scores_manifest, rows = read_scores(list(scores_paths))
    plan = _targets_plan(dataset, scores_manifest)
    mpath = targets_manifest_path(out)
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if old.get("plan") == plan:
            log(f"{mpath.parent}: teacher targets already there for these scores")
            return old
    mpath.unlink(missing_ok=True)  # no manifest while the shards are rewritten: a crash leaves "no targets", not a mix
    student = StudentBytes()
    stats = {"docs": 0, "docs_scored": 0, "docs_mismatched": 0, "chunks": 0, "tokens_in_chunks": 0, "tokens": 0}
    (out / TEACHER_DIR).mkdir(exist_ok=True)
    for shard in dataset["shards"]:
        prefix = out / shard["prefix"]
        _, lengths, pointers, _ = read_index(f"{prefix}.idx")
        tokens = np.memmap(f"{prefix}.bin", dtype=np.int32, mode="r")
        target_prefix = targets_prefix(prefix)
        new_pointers = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))[:-1] * 4
        with atomic_file(target_prefix + ".bin") as tmp, open(tmp, "wb") as f:
            for n, p in zip(lengths, pointers):
                ids = tokens[p // 4 : p // 4 + n]
                body = ids[:-1] if n and ids[-1] == EOD_ID else ids
                data = student.token_bytes(body)
                row = rows.get(hashlib.sha256(data).hexdigest())
                if row is None or row["ends"][-1:] != [len(data)]:
                    stats["docs_mismatched"] += row is not None  # same text, spans of other bytes: refused
                    target = np.full(len(body), np.nan, dtype=np.float32)
                    if len(body):
                        target[-1] = NO_TARGET
                else:
                    lp = np.array([np.nan if x is None else x for x in row["logprobs"]], dtype=np.float64)
                    target = chunk_targets(student.ends(body), np.asarray(row["ends"]), lp)
                    stats["docs_scored"] += 1
                    good = np.isfinite(target)
                    stats["chunks"] += int(good.sum())
                    stats["tokens_in_chunks"] += _tokens_in_good_chunks(target)
                full = np.concatenate((target, [NO_TARGET] * (len(ids) - len(body)))).astype(np.float32)
                f.write(full.tobytes())
                stats["docs"] += 1
                stats["tokens"] += int(n)
        write_index(target_prefix + ".idx", lengths, new_pointers)  # int32 code: see the module docstring
    manifest = {
        "kind": TARGETS_KIND,
        "method": METHOD,
        "plan": plan,
        "teacher": scores_manifest.get("teacher"),
        "teacher_tokenizer": scores_manifest["plan"].get("teacher_tokenizer"),
        "student_tokenizer": dataset["tokenizer"],
        "scores": {"files": [str(p) for p in scores_paths], "rows": len(rows)},
        "prefixes": [targets_prefix(s["prefix"]) for s in dataset["shards"]],
        **stats,
        "docs_unscored": stats["docs"] - stats["docs_scored"],
    }
    write_text_atomic(mpath, dump_json(manifest))
    log(
        f"teacher targets ({METHOD}): {stats['docs_scored']} of {stats['docs']} documents scored, {stats['chunks']} chunks "
        f"covering {stats['tokens_in_chunks']} of {stats['tokens']} tokens -> {mpath.parent}"
    )
    return manifest


def _tokens_in_good_chunks(target: np.ndarray) -> int:
    """Student tokens that lie in a chunk with a target (the span after the previous chunk end)."""
    ends = np.flatnonzero(~np.isnan(target))
    starts = np.concatenate(([-1], ends[:-1]))
    good = np.isfinite(target[ends])
    return int((ends - starts)[good].sum())


def read_targets_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any] | None:
    p = targets_manifest_path(dataset_dir)
    return json.loads(p.read_text()) if p.is_file() else None
