"""`python -m inference score MODEL CORPUS --out FILE`: a teacher's log-probability of every token of
a corpus, with each token's byte span: what cross-tokenizer distillation by likelihood matching
needs from the teacher (data_prep/alignment.py aligns it to the student's tokens; recipes/alm.py
trains on it).

- MODEL: any HF causal LM directory (StarCoder's GPTBigCode, StarCoder2, Llama-family coders, a
  gpt-oss HF export), a Megatron checkpoint, or an OpenAI-compatible server that returns prompt
  log-probabilities (vLLM's `prompt_logprobs`): `--endpoint URL --model NAME`, with the teacher's
  tokenizer given by `--tokenizer DIR` (its HF tokenizer files; not needed for a served gpt-oss).
  Prompts go to the server as token ids, so the spans are exact whatever the server's detokenizer.
- CORPUS: JSONL / parquet files as `data_prep pretrain` reads them (The Stack's `content`), or
  text files. With `--redact-pii`, the text is redacted as `data_prep pretrain --redact-pii` does
  before scoring, so that scores match the text the student trains on.
- FILE: one JSON row per distinct document: `key` (= `sha256` of the text's UTF-8), `loc`
  (file:line), `ends` (each teacher token's byte end in the text), `logprobs` (log p(token | the
  tokens before it), natural log; null where the teacher has no context: the first token when the
  tokenizer adds no BOS). A document longer than the teacher's context (`--max-context`, default:
  the model's) is scored in windows that overlap by half, each token with at least half a window of
  context (the strided evaluation of HF's perplexity guide).
- Resumable like `generate --out` (inference/teacher.py): rows are appended per batch, a rerun of
  the same command skips the documents done, a torn last line is cut; FILE.manifest.json names the
  teacher, its tokenizer (fingerprint), the method and the corpus, and a rerun with another teacher,
  tokenizer, method or corpus is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.alignment import METHOD, SCORE_KIND
from inference.teacher import GenerationLog

DEFAULT_CONTEXT = 2048  # when neither --max-context nor the model says


class ScoreLog(GenerationLog):
    KIND = SCORE_KIND
    COMMAND = "inference score --out"
    HEADLINE = ("teacher", "teacher_tokenizer", "method")
    ROWS = "scores"


# ---------------------------------------------------------------------------------------------
# The teacher's tokens
# ---------------------------------------------------------------------------------------------


def tokenizer_fingerprint(codec: Any) -> str:
    """sha256 of the teacher tokenizer's definition (tokenizer.json; the kit's own fingerprint for o200k)."""
    tok = getattr(codec, "tokenizer", None)
    if tok is None:
        from gptoss.tokenizer import fingerprint

        return fingerprint()
    backend = getattr(tok, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    return "sha256:" + hashlib.sha256(spec.encode()).hexdigest()


def text_tokens(codec: Any, text: str) -> tuple[list[int], int, np.ndarray] | None:
    """(ids as the model reads them, how many lead ids are context only (a BOS), byte end of each
    text token), or None when the tokens do not spell the text's bytes (a normalizing tokenizer)."""
    ids = list(codec.encode(text))
    data = text.encode("utf-8", "surrogatepass")
    for lead in (0, 1):
        pieces = [codec.decode_bytes([i]) for i in ids[lead:]]
        joined = b"".join(pieces)
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
        if joined == data:
            return ids, lead, ends
        if joined == b" " + data:  # sentencepiece's prefix space ("▁" prepended): not the text's
            return ids, lead, np.maximum(ends - 1, 0)
    return None


def windows(n: int, ctx: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored) token ranges covering n tokens in windows of at most ctx tokens;
    every token after the first is scored once, with at least ctx // 2 tokens of context after the
    first window. n=10, ctx=4: (0,4,1) (2,6,4) (4,8,6) (6,10,8)."""
    if n <= ctx:
        return [(0, n, 1)]
    stride = max(1, ctx // 2)
    out = [(0, ctx, 1)]
    start = stride
    while out[-1][1] < n:
        end = min(start + ctx, n)
        out.append((start, end, out[-1][1]))
        start += stride
    return out


# ---------------------------------------------------------------------------------------------
# Log-probabilities
# ---------------------------------------------------------------------------------------------


def _logprobs_local(backend: Any, seqs: list[list[int]]) -> list[np.ndarray]:
    """log p(seq[i] | seq[:i]) for i >= 1 of each sequence: one right-padded forward for a
    transformers model, one forward per sequence for the kit's Megatron backend."""
    import torch
    from transformers import PreTrainedModel

    model = getattr(backend, "model", None)
    out = []
    with torch.no_grad():
        if isinstance(model, PreTrainedModel):  # transformers: one padded batch
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            ids, mask = ids.to(backend.device), mask.to(backend.device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
            return [lp[i, : len(s) - 1].double().cpu().numpy() for i, s in enumerate(seqs)]
        for s in seqs:
            t = torch.tensor([s])
            logits = backend.forward(t).float()
            lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, t[0, 1:, None].to(logits.device))[:, 0]
            out.append(lp.double().cpu().numpy())
    return out


def _logprobs(backend: Any, seqs: list[list[int]]) -> list[np.ndarray]:
    if hasattr(backend, "prompt_logprobs"):  # an endpoint
        return backend.prompt_logprobs(seqs)
    return _logprobs_local(backend, seqs)


def score_ids(backend: Any, docs: list[list[int]], ctx: int) -> list[np.ndarray]:
    """Per document, log p of every token given the ones before it (NaN for the first), windowed."""
    jobs = [(d, w) for d, ids in enumerate(docs) for w in windows(len(ids), ctx)]
    results = _logprobs(backend, [docs[d][a:b] for d, (a, b, _) in jobs]) if jobs else []
    out = [np.full(len(ids), np.nan) for ids in docs]
    for (d, (a, b, first)), lp in zip(jobs, results):
        out[d][first:b] = lp[first - a - 1 :]
    return out


def context_of(backend: Any) -> int:
    cfg = getattr(backend, "config", None)
    for name in ("n_positions", "max_position_embeddings", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 1:
            return v
    return int(getattr(backend, "max_model_len", None) or DEFAULT_CONTEXT)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _documents(inputs: list[str], text_key: str, redact: bool) -> Iterator[tuple[str, str, str]]:
    """(sha256, loc, text) of each distinct document of the corpus, in input order."""
    from data_prep.readers import expand_inputs, list_units, read_unit

    redactor = None
    if redact:
        from data_prep.pii import Redactor

        redactor = Redactor().redact_bytes
    seen: set[bytes] = set()
    for unit in list_units(expand_inputs(inputs)):
        for rec in read_unit(unit, text_key):
            if rec.error is not None or not rec.text:
                continue
            b, text = rec.data, rec.text
            if redactor is not None:
                red, counts = redactor(b)
                if counts:
                    b, text = red, red.decode("utf-8", "surrogatepass")
            d = hashlib.sha256(b).digest()
            if d in seen:
                continue
            seen.add(d)
            yield d.hex(), rec.loc, text


def _corpus_info(inputs: list[str]) -> list[dict]:
    from data_prep.readers import expand_inputs

    return [{"path": str(Path(f).absolute()), "bytes": os.path.getsize(f)} for f in expand_inputs(inputs)]


def run(
    backend: Any,
    inputs: list[str],
    out: str,
    *,
    text_key: str = "content,text",
    redact_pii: bool = False,
    max_context: int | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    command: str = "",
    writer: bool = True,
) -> dict[str, Any]:
    """Score every distinct document of `inputs` into `out` (resumable); returns the summary."""
    from tqdm import tqdm

    from inference.endpoint import TextOnlyCodec

    codec = backend.codec
    if isinstance(codec, TextOnlyCodec):
        raise ValueError(
            f"{backend.name}: the kit has no tokenizer for this server's model: give the teacher's HF tokenizer "
            "directory with --tokenizer DIR"
        )
    ctx = max_context or context_of(backend)
    if ctx < 2:
        raise ValueError(f"--max-context {ctx}: give at least 2 tokens")
    plan = {
        "teacher": backend.name,
        "teacher_tokenizer": tokenizer_fingerprint(codec),
        "method": METHOD,
        "max_context": ctx,
        "corpus": _corpus_info(inputs),
        "text_key": text_key,
        "redact_pii": redact_pii,
    }
    log = ScoreLog(out, plan, overwrite=overwrite, writer=writer)
    docs = list(_documents(inputs, text_key, redact_pii))
    todo = [d for d in docs if d[0] not in log.done]
    info = {"command": command, "model_type": getattr(backend, "model_type", None)}
    log.write_manifest(info, len(docs))
    if log.done and todo:
        print(f"{out}: {len(log.done)} of {len(docs)} documents scored already, continuing", file=sys.stderr)
    bar = tqdm(total=len(todo), unit="doc", file=sys.stderr, mininterval=1.0, disable=len(todo) < 2 or not writer)
    t0, n_tok, unaligned = time.time(), 0, 0
    for b in range(0, len(todo), batch_size):
        batch = todo[b : b + batch_size]
        toks = [text_tokens(codec, text) for _, _, text in batch]
        ids = [t[0] if t is not None else [] for t in toks]
        lps = score_ids(backend, ids, ctx)
        rows = []
        for (sha, loc, _), t, lp in zip(batch, toks, lps):
            if t is None:  # recorded, so the document is not scored again, and never aligned
                unaligned += 1
                rows.append({"key": sha, "sha256": sha, "loc": loc, "ends": [], "logprobs": []})
                continue
            _, lead, ends = t
            vals = lp[lead:]
            n_tok += len(vals)
            rows.append({"key": sha, "sha256": sha, "loc": loc, "ends": ends.tolist(),
                         "logprobs": [None if np.isnan(x) else round(float(x), 6) for x in vals]})  # fmt: skip
        log.append(rows)
        log.write_manifest(info, len(docs))
        bar.update(len(batch))
    bar.close()
    dt = time.time() - t0
    if writer:
        print(f"scored {len(todo)} document(s), {n_tok} teacher tokens in {dt:.1f}s with {backend.name} -> {out}",
              file=sys.stderr)  # fmt: skip
        if unaligned:
            print(
                f"note: {unaligned} document(s) whose teacher tokens do not spell their bytes get no target",
                file=sys.stderr,
            )
    return {"documents": len(docs), "scored_now": len(todo), "teacher_tokens": n_tok}
