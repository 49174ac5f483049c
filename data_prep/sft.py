"""Chat conversations -> harmony-rendered, loss-masked, packed SFT data for Megatron-Bridge.

Input: JSONL (plain/.gz/.zst), one conversation per line: {"messages": [{"role": ..., "content": ...}]}
with roles system, developer, user, assistant. An assistant message may carry its reasoning in
"thinking" (HF gpt-oss template), "reasoning" or "reasoning_content"; it is rendered as an analysis
message before the final one. An explicit "channel" (analysis | commentary | final) is honoured.

Rendering is the harmony format with the real special tokens (checked against openai_harmony in
the tests):

    <|start|>{role}<|message|>{content}<|end|>                                   (system/developer/user)
    <|start|>assistant<|channel|>{channel}<|message|>{content}<|end|>            (assistant)
    ... the last (final) assistant message ends with <|return|> instead of <|end|>.

As gpt-oss prescribes, the analysis (chain of thought) of earlier turns is dropped and only the last
turn keeps its reasoning (--keep-all-analysis keeps all). (openai_harmony's own default drops the
reasoning before the first final message, which removes the last turn's reasoning in single-turn
data: not what reasoning SFT wants; the tests compare against it with auto_drop_analysis=False.)

Loss mask: 1 on what the model generates, i.e. every token of assistant messages after
`<|start|>assistant` (channel header, content, <|end|>/<|return|>); the `<|start|>assistant` header is
prompted at inference, except directly after another assistant message, where the model wrote it.
Analysis messages get loss unless --no-analysis-loss.

Output, in the packed format of Megatron-Bridge's GPTSFTPackedParquetDataset, under <output>/packed/:
    training_<N>.idx.parquet, validation_<N>.idx.parquet
        one row per pack; columns input_ids list<int32>, loss_mask list<int8>, seq_start_id list<int32>.
        As in the bridge's own packer, each sequence keeps all its tokens, counts len-1 against N
        (inputs and labels are shifted by one), and loss_mask[i] says whether label ids[i+1] is trained.
    <N>_metadata.jsonl   the bridge's packing metadata (a JSON list: train, then validation)
plus <output>/manifest.json: counts, drop reasons with locations, packing efficiency, and the recipe
overrides that point GPTSFTDatasetConfig at these files.

Context parallelism (--pad-to-multiple M, the recipe's offline_packing_specs.pad_seq_to_mult = 2*CP):
the bridge's loader then reads each sequence's span as a padded one (cu_seqlens_padded) that must be
a multiple of M, and its logical end as the last token that is not the tokenizer's eos. So, exactly
as the bridge's own packer (offline.py tokenize_dataset/_pre_pad_data_point), each conversation is
padded with eos tokens (<|return|>, the recipes' HF tokenizer's eos and eod), loss mask 0, until
len - 1 is a multiple of M; packs are filled by these padded lengths, and the metadata entries carry
"pad_seq_to_mult": M (which recipes/run.py checks against the recipe's). M = 1 writes what it always did.

Decontamination (`decontam`, data_prep/decontam.py): a conversation whose messages hold a benchmark
problem is dropped ("decontaminated"). The CLI turns it on against HumanEval for teacher data (inputs
written by `inference generate`, data_prep/teacher.py), whose generate manifests the manifest copies.
"""

from __future__ import annotations

import bisect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.decontam import DecontamConfig
from data_prep.readers import Unit, expand_inputs, kind_of
from data_prep.util import DropStats, dump_json
from kit.fs import write_text_atomic

ROLES = ("system", "developer", "user", "assistant")
CHANNELS = ("analysis", "commentary", "final")
REASONING_KEYS = ("thinking", "reasoning", "reasoning_content")


class ConversationError(ValueError):
    """A conversation that cannot be rendered; `reason` is the manifest's drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class SFTConfig:
    inputs: list[str]
    output: Path
    seq_length: int = 2048
    val_inputs: list[str] = field(default_factory=list)
    val_fraction: float = 0.0  # hash-based split when no val_inputs are given
    analysis_loss: bool = True
    keep_all_analysis: bool = False
    seed: int = 1234
    messages_key: str = "messages"
    decontam: DecontamConfig | None = None  # drop conversations holding benchmark problems
    pad_to_multiple: int = 1  # the recipe's pad_seq_to_mult (2 * context parallel size); 1: no padding


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def normalize(messages: Any, keep_all_analysis: bool = False) -> list[dict[str, str]]:
    """Validate a conversation and flatten it to harmony messages [{role, channel, content}]."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("missing_messages", "expected a non-empty list of messages")
    flat: list[dict[str, str]] = []
    for n, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ConversationError("bad_message", f"message {n} is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise ConversationError("bad_role", f"message {n} has role {role!r}; expected one of {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str):
            raise ConversationError("bad_message", f"message {n} content is not a string")
        if role != "assistant":
            flat.append({"role": role, "channel": "", "content": content})
            continue
        reasoning = next((m[k] for k in REASONING_KEYS if isinstance(m.get(k), str) and m[k]), None)
        if reasoning is not None:
            flat.append({"role": "assistant", "channel": "analysis", "content": reasoning})
        channel = m.get("channel") or "final"
        if channel not in CHANNELS:
            raise ConversationError(
                "bad_channel", f"message {n} has channel {channel!r}; expected one of {', '.join(CHANNELS)}"
            )
        flat.append({"role": "assistant", "channel": channel, "content": content})
    last = flat[-1]
    if last["role"] != "assistant" or last["channel"] != "final":
        raise ConversationError("no_final_answer", "the conversation must end with an assistant final message")
    if not any(m["content"].strip() for m in flat if m["role"] == "assistant"):
        raise ConversationError("empty", "every assistant message is empty")
    if not keep_all_analysis:
        last_user = max((i for i, m in enumerate(flat) if m["role"] != "assistant"), default=-1)
        flat = [m for i, m in enumerate(flat) if i > last_user or m["channel"] != "analysis"]
    return flat


def render(flat: list[dict[str, str]], analysis_loss: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and a per-token loss mask (1 = the model is trained to produce this token)."""
    from gptoss.tokenizer import SPECIAL, encoding

    enc = encoding()
    start, end, ret = SPECIAL["<|start|>"], SPECIAL["<|end|>"], SPECIAL["<|return|>"]
    chan, msg = SPECIAL["<|channel|>"], SPECIAL["<|message|>"]
    ids: list[int] = []
    mask: list[int] = []
    prev_assistant = False
    for n, m in enumerate(flat):
        head = [start, *enc.encode_ordinary(m["role"])]
        body: list[int] = []
        if m["channel"]:
            body += [chan, *enc.encode_ordinary(m["channel"])]
        body += [msg, *enc.encode_ordinary(m["content"])]
        body.append(ret if n == len(flat) - 1 else end)
        is_asst = m["role"] == "assistant"
        trained = is_asst and (analysis_loss or m["channel"] != "analysis")
        ids += head + body
        mask += [int(trained and prev_assistant)] * len(head) + [int(trained)] * len(body)
        prev_assistant = is_asst
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` per bin, each bin summing to <= capacity.

    Deterministic (ties broken by index) and O(n log n) apart from list inserts, so it handles
    millions of conversations; packs are usually > 95% full for chat data.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin id)
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"sequence {i} has length {need} > pack capacity {capacity}")
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            rem, b = free.pop(k)
        else:
            rem, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (rem - need, b))
    return bins


def padded_span(n_tokens: int, multiple: int) -> int:
    """The span a sequence of n_tokens takes in a pack: n_tokens - 1 (inputs and labels are shifted by
    one) rounded up to `multiple`, as the bridge's packer pads it (offline.py tokenize_dataset)."""
    return -(-(n_tokens - 1) // multiple) * multiple


def _pack_rows(
    seqs: list[tuple[list[int], list[int]]], seq_length: int, seed: int, pad_to_multiple: int = 1
) -> tuple[list[dict], dict]:
    from gptoss.tokenizer import SPECIAL

    # The bridge pads with its tokenizer's eod and finds a sequence's logical end as its last
    # non-eos token; the recipes' HF tokenizer has eos_token = <|return|>, so both are this id.
    pad_id = SPECIAL["<|return|>"]
    lengths = [padded_span(len(ids), pad_to_multiple) for ids, _ in seqs]
    bins = pack(lengths, seq_length)
    # Best-fit decreasing sorts by length: shuffle the packs so training does not see a curriculum.
    perm = np.random.default_rng(seed).permutation(len(bins))
    rows = []
    for b in perm:
        ids: list[int] = []
        mask: list[int] = []
        starts: list[int] = []
        for i in bins[b]:
            s_ids, s_mask = seqs[i]
            pad = lengths[i] + 1 - len(s_ids)
            starts.append(len(ids))
            ids += s_ids + [pad_id] * pad
            mask += s_mask[1:] + [0] * (1 + pad)  # the bridge's rolled mask: mask[i] trains label ids[i+1]
        rows.append({"input_ids": ids, "loss_mask": mask, "seq_start_id": starts})
    used = sum(lengths)
    meta = {
        "dataset_max_seqlen": max(lengths),
        "max_samples_per_bin": max(len(b) for b in bins),
        "packing_factor": round(len(lengths) / len(bins), 2),
        "packing_efficiency": round(100.0 * used / (len(bins) * seq_length), 2),
        "pack_size": seq_length,
        "min_packed_seqlen": min(sum(lengths[i] for i in b) for b in bins),
    }
    if pad_to_multiple > 1:  # absent = 1, so that the default packing's metadata is what it always was
        meta["pad_seq_to_mult"] = pad_to_multiple
    return rows, meta


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "input_ids": pa.array([r["input_ids"] for r in rows], type=pa.list_(pa.int32())),
            "loss_mask": pa.array([r["loss_mask"] for r in rows], type=pa.list_(pa.int8())),
            "seq_start_id": pa.array([r["seq_start_id"] for r in rows], type=pa.list_(pa.int32())),
        }
    )
    # The temporary name must not end in .parquet: the bridge globs the directory for *.parquet.
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=500)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def _read_conversations(files: list[str], key: str):
    """(loc, messages | None, drop reason, bytes) for every line of every file."""
    for f in files:
        if kind_of(f) != "jsonl":
            raise ValueError(f"{f}: SFT input must be JSONL (.jsonl, .jsonl.gz, .jsonl.zst)")
        yield from _jsonl_objects(Unit(f, "jsonl"), key)


def _jsonl_objects(unit: Unit, key: str):
    """(loc, messages | None, reason, bytes) per line, bad lines included."""
    from data_prep.readers import iter_lines

    lineno = 0
    try:
        for lineno, raw in iter_lines(unit.path):
            if not raw.strip():
                continue
            loc = f"{unit.path}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield loc, None, "bad_utf8", len(raw)
                continue
            except ValueError:
                yield loc, None, "bad_json", len(raw)
                continue
            if not isinstance(obj, dict) or key not in obj:
                yield loc, None, "missing_messages", len(raw)
                continue
            yield loc, obj[key], None, len(raw)
    except Exception:  # corrupt compressed stream: keep what was read, report the rest
        yield f"{unit.path}:{lineno + 1}", None, "unreadable_file", 0


def _is_validation(ids: list[int], fraction: float) -> bool:
    import xxhash

    h = xxhash.xxh3_64_intdigest(np.asarray(ids, dtype=np.int32).tobytes())
    return (h % 1_000_000) < fraction * 1_000_000


def packed_paths(output: Path, seq_length: int) -> dict[str, Path]:
    """The files of one packing (names: kit.workspace.packed_sft_files, which the recipes read)."""
    from kit.workspace import packed_sft_files

    return packed_sft_files(output, seq_length)


def run(cfg: SFTConfig, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Render, mask, split and pack; returns the manifest (also written to <output>/manifest.json)."""
    from data_prep.teacher import teacher_summary
    from gptoss.tokenizer import fingerprint

    if cfg.seq_length < 16:
        raise ValueError(f"--seq-length {cfg.seq_length} is too small; use the recipe's sequence length (e.g. 2048)")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"--val-fraction {cfg.val_fraction} must be in [0, 1)")
    mult = cfg.pad_to_multiple
    if mult < 1 or cfg.seq_length % mult:
        # the pack's tail (seq_length - its sequences) is a segment of its own for the bridge: it too
        # must be a multiple, as every sequence is
        raise ValueError(
            f"--pad-to-multiple {mult} must be >= 1 and divide --seq-length {cfg.seq_length}: "
            f"use the recipe's pad_seq_to_mult (2 * context parallel size, e.g. 4)"
        )
    out = Path(cfg.output).absolute()
    drops = DropStats()
    splits: dict[str, list[tuple[list[int], list[int]]]] = {"train": [], "validation": []}
    sources = [("train", expand_inputs(cfg.inputs))]
    if cfg.val_inputs:
        sources.append(("validation", expand_inputs(cfg.val_inputs)))
    records = 0
    matcher = None
    if cfg.decontam is not None:
        from data_prep.decontam import Matcher

        matcher = Matcher(cfg.decontam)
    hits: dict[str, int] = {}  # benchmark task -> conversations dropped
    for split, files in sources:
        for loc, messages, reason, nbytes in _read_conversations(files, cfg.messages_key):
            records += 1
            if reason is not None:
                drops.add(reason, nbytes, loc)
                continue
            try:
                flat = normalize(messages, cfg.keep_all_analysis)
            except ConversationError as e:
                drops.add(e.reason, 0, loc)
                continue
            found = matcher.find("\n".join(m["content"] for m in flat)) if matcher is not None else []
            if found:
                drops.add("decontaminated", 0, loc)
                for task in sorted({f"{h.benchmark}:{h.task_id}" for h in found}):
                    hits[task] = hits.get(task, 0) + 1
                continue
            ids, mask = render(flat, cfg.analysis_loss)
            if padded_span(len(ids), mult) > cfg.seq_length:
                drops.add("too_long", 0, loc)
                continue
            if not any(mask):
                drops.add("no_loss_tokens", 0, loc)
                continue
            target = split
            if split == "train" and not cfg.val_inputs and cfg.val_fraction and _is_validation(ids, cfg.val_fraction):
                target = "validation"
            splits[target].append((ids, mask))
    if not splits["train"]:
        raise RuntimeError(f"no conversation survived ({dump_json(drops.to_dict())}); nothing written")

    paths = packed_paths(out, cfg.seq_length)
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    metadata = []
    stats = {}
    for split in ("train", "validation"):
        if not splits[split]:
            paths[split].unlink(missing_ok=True)  # a stale file from an earlier run must not linger
            continue
        rows, meta = _pack_rows(splits[split], cfg.seq_length, cfg.seed, mult)
        _write_parquet(rows, paths[split])
        metadata.append(meta)
        stats[split] = {
            "conversations": len(splits[split]),
            "packs": len(rows),
            "tokens": sum(len(ids) for ids, _ in splits[split]),
            "loss_tokens": sum(sum(m) for _, m in splits[split]),
            "padding_tokens": sum(padded_span(len(ids), mult) + 1 - len(ids) for ids, _ in splits[split]),
            "packing_efficiency": meta["packing_efficiency"],
        }
    write_text_atomic(paths["metadata"], json.dumps(metadata))
    manifest = {
        "format": "megatron-bridge packed parquet (GPTSFTPackedParquetDataset)",
        "tokenizer": fingerprint(),
        "seq_length": cfg.seq_length,
        "pad_to_multiple": mult,  # each sequence padded to len - 1 a multiple of it (1: unpadded)
        "records": records,
        "splits": stats,
        "dropped": drops.to_dict(),
        "analysis_loss": cfg.analysis_loss,
        "keep_all_analysis": cfg.keep_all_analysis,
        "inputs": [f for _, files in sources for f in files],
        "decontamination": _decontam_report(matcher, hits),
        "teacher_data": teacher_summary([f for _, files in sources for f in files]),
        "files": {k: str(v.relative_to(out)) for k, v in paths.items() if v.exists()},
        "overrides": recipe_overrides(out, cfg.seq_length, has_validation="validation" in stats),
    }
    write_text_atomic(out / "manifest.json", dump_json(manifest))
    for split, s in stats.items():
        log(
            f"{split}: {s['conversations']:,} conversations -> {s['packs']:,} packs of {cfg.seq_length} tokens, "
            f"packing efficiency {s['packing_efficiency']:.1f}%"
            + (f" ({s['padding_tokens']:,} padding tokens, multiple {mult})" if mult > 1 else "")
        )
    for reason, v in drops.to_dict().items():
        log(f"  dropped {v['docs']:,} ({reason}), e.g. {', '.join(v['examples'][:3])}")
    return manifest


def _decontam_report(matcher, hits: dict[str, int]) -> dict[str, Any] | None:
    """The sets searched (as pretrain's manifest has them) and the conversations dropped per task."""
    if matcher is None:
        return None
    return {**matcher.summary(), "dropped_docs": sum(hits.values()), "tasks": hits}


def recipe_overrides(output: Path, seq_length: int, has_validation: bool = True) -> list[str]:
    """`python -m recipes` overrides that point an SFT recipe at these files."""
    p = packed_paths(output, seq_length)
    out = [
        f"dataset.dataset_root={output}",  # the recipes check it exists (default: $WORKSPACE/data/sft)
        f"dataset.seq_length={seq_length}",
        f"dataset.offline_packing_specs.packed_sequence_size={seq_length}",
        f"dataset.offline_packing_specs.packed_train_data_path={p['train']}",
        f"dataset.offline_packing_specs.packed_metadata_path={p['metadata']}",
    ]
    if has_validation:
        out.append(f"dataset.offline_packing_specs.packed_val_data_path={p['validation']}")
    else:
        out.append("dataset.do_validation=false")
    return out
