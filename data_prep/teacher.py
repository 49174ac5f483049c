"""Teacher data (sequence-level distillation from any model, whatever its tokenizer).

Logit distillation needs the teacher's and the student's vocabularies to agree (gpt-oss teachers);
any other teacher (StarCoder, StarCoder2, a Llama-family coder, a served model) teaches through its
text instead: prompts built here from the real corpus, completions by `python -m inference
generate`, and the rows of that run read by `data_prep pretrain` (the `content` field: prompt and
completion as code) or `data_prep sft` (the `messages` field: prompt as user, completion as
assistant).

`python -m data_prep prompts INPUTS -o prompts.jsonl --style head|docstring|oss-instruct` reads The
Stack's parquet/JSONL with the same readers, filters and decontamination as `pretrain`, and writes
one prompt per source file:
- head: the file's first `--lines` lines; the teacher continues the file;
- docstring: the first top-level Python function with a docstring, cut after the docstring (with
  the file's imports before it), HumanEval's prompt shape; the teacher writes the body;
- oss-instruct: Magicoder's OSS-Instruct (Wei et al., 2023, section 2.1 and figure 4): a seed of 1
  to 15 consecutive lines taken at random from the file (seeded by the file's text, so a rerun
  picks the same), inside the paper's prompt; an instruction-following teacher (chat mode, or a
  served model) writes a "[Problem Description]" and its "[Solution]". `inference generate` then
  writes each row's problem as the user's message and the solution as the assistant's answer
  (`oss_instruct_pair`), Magicoder's training pairs; a completion without both sections keeps no
  `messages` or `content`, so data_prep drops it and counts it (`missing_messages`).
Rows: {"id", "prompt", "source", "lang", "style"} (+ "seed" for oss-instruct); `id` is a hash of
the prompt (the same prompt from two files is written once). Files holding benchmark problems
(HumanEval by default) give no prompt.

The generate run writes its manifest beside its output (`generation_manifest_path`): the teacher,
the sampling settings, the prompts file and its checksum. `pretrain` and `sft` recognize such
inputs as teacher data: they copy those manifests into their own and decontaminate them against
HumanEval unless told otherwise (`--decontaminate SETS` or `--no-decontaminate`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.util import DropStats, dump_json, sha256_file

STYLES = ("head", "docstring", "oss-instruct")
# Magicoder's prompt, verbatim but for the language tag of the fence (the paper's figure 4; the
# system sentence leads the user text, as in its StarCoder2 template, so any teacher reads it).
OSS_INSTRUCT_TEMPLATE = (
    "You are exceptionally skilled at crafting high-quality programming problems and offering precise solutions.\n"
    "Please gain inspiration from the following random code snippet to create a high-quality programming problem. "
    "Present your output in two distinct sections: [Problem Description] and [Solution].\n\n"
    "Code snippet for inspiration:\n```{lang}\n{seed}\n```\n\n"
    "Guidelines for each section:\n"
    "1. [Problem Description]: This should be **completely self-contained**, providing all the contextual information "
    "one needs to understand and solve the problem. Assume common programming knowledge, but ensure that any specific "
    "context, variables, or code snippets pertinent to this problem are explicitly included.\n"
    "2. [Solution]: Offer a comprehensive, **correct** solution that accurately addresses the [Problem Description] "
    "you provided."
)
OSS_INSTRUCT_MAX_LINES = 15  # seeds of 1 to 15 consecutive lines (Magicoder, section 2.1)
MANIFEST_SUFFIX = ".manifest.json"  # <file>.manifest.json beside a prompts file or a generate output
GENERATE_KIND = "inference-generate"
PROMPTS_KIND = "data_prep-prompts"
DEFAULT_DECONTAM = "humaneval"  # what teacher data is decontaminated against unless told otherwise


def generation_manifest_path(jsonl: str | Path) -> Path:
    """Where the manifest of a JSONL written by `inference generate` (or `data_prep prompts`) lies."""
    p = Path(jsonl)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def read_manifest_beside(path: str | Path, kind: str) -> dict[str, Any] | None:
    """The manifest of `kind` beside `path`, or None (no manifest, another kind, unreadable)."""
    m = generation_manifest_path(path)
    if not m.is_file():
        return None
    try:
        obj = json.loads(m.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return obj if isinstance(obj, dict) and obj.get("kind") == kind else None


def teacher_inputs(files: list[str]) -> dict[str, dict[str, Any]]:
    """{input file: its generate manifest} for the inputs that are teacher data."""
    out = {}
    for f in files:
        m = read_manifest_beside(f, GENERATE_KIND)
        if m is not None:
            out[f] = m
    return out


def teacher_summary(files: list[str]) -> list[dict[str, Any]] | None:
    """What data_prep's manifests record of teacher inputs: teacher, sampling, prompts per file."""
    found = teacher_inputs(files)
    if not found:
        return None
    keys = ("teacher", "backend", "model_type", "sampling", "mode", "prompts", "rows", "complete", "command")
    return [{"input": f, **{k: m.get(k) for k in keys}} for f, m in found.items()]


def default_decontam(spec: str | None, off: bool, files: list[str]) -> str | None:
    """The --decontaminate SETS a data_prep command uses: the one given; else, when any input is
    teacher data, DEFAULT_DECONTAM (unless --no-decontaminate); else none."""
    if spec and off:
        raise ValueError("--decontaminate SETS and --no-decontaminate contradict each other: give one")
    if spec or off:
        return spec or None
    return DEFAULT_DECONTAM if teacher_inputs(files) else None


# ---------------------------------------------------------------------------------------------
# Prompts from a corpus
# ---------------------------------------------------------------------------------------------


@dataclass
class PromptsConfig:
    inputs: list[str]
    output: Path
    style: str = "head"
    lines: int = 20  # head: lines per prompt
    limit: int | None = None  # stop after this many prompts
    text_key: str = "content"
    languages: list[str] = field(default_factory=list)
    licenses: list[str] | None = None  # None: the code preset's permissive list; []: any
    decontaminate: str | None = DEFAULT_DECONTAM


def head_prompt(text: str, lines: int) -> str | None:
    """The first `lines` lines, when the file has more (something is left for the teacher to write)."""
    parts = text.splitlines(keepends=True)
    if len(parts) <= lines:
        return None
    prompt = "".join(parts[:lines])
    return prompt if prompt.strip() else None


def docstring_prompt(text: str) -> str | None:
    """The file's imports and its first top-level function with a docstring and a body, cut after
    the docstring (HumanEval's prompt shape); None for other files (not Python, no such function)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    lines = text.splitlines(keepends=True)
    imports: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append("".join(lines[node.lineno - 1 : node.end_lineno]))
            continue
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
            continue
        if ast.get_docstring(node) is None:
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        doc_end = node.body[0].end_lineno
        if doc_end is None:
            continue
        body = "".join(lines[start - 1 : doc_end])
        if not body.endswith("\n"):
            body += "\n"
        return "".join(imports) + ("\n" if imports else "") + body
    return None


def oss_instruct_seed(text: str) -> str | None:
    """1 to 15 consecutive lines of `text`, chosen at random but reproducibly (seeded by the text);
    None when the file has no line with code on it."""
    import random

    lines = text.splitlines()
    rng = random.Random(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    for _ in range(8):  # a seed of blank lines only is no inspiration: draw again
        n = rng.randint(1, min(OSS_INSTRUCT_MAX_LINES, len(lines) or 1))
        start = rng.randint(0, max(len(lines) - n, 0))
        seed = "\n".join(lines[start : start + n])
        if seed.strip():
            return seed
    return None


def oss_instruct_prompt(seed: str, lang: str) -> str:
    return OSS_INSTRUCT_TEMPLATE.format(lang=lang.lower().replace(" ", ""), seed=seed)


def oss_instruct_pair(answer: str) -> tuple[str, str] | None:
    """(problem, solution) from a teacher's answer to an OSS-Instruct prompt: the texts after its
    "[Problem Description]" and "[Solution]" headings (with or without a colon, markdown heading or
    bold marks), or None if either is missing or empty."""
    import re

    def heading(name: str) -> re.Match | None:  # at a line start, after any "#", "*" or blanks
        return re.search(rf"^[#*\t ]*\[{name}\][*:]*[\t ]*", answer, re.M)

    p, s = heading("Problem Description"), heading("Solution")
    if p is None or s is None or s.start() < p.end():
        return None
    problem, solution = answer[p.end() : s.start()].strip(), answer[s.end() :].strip()
    return (problem, solution) if problem and solution else None


def _records(cfg: PromptsConfig, drops: DropStats) -> Iterator[tuple[str, str, str]]:
    """(location, language, text) of every corpus file that passes the filters and decontamination."""
    from data_prep.decontam import DecontamConfig, Matcher
    from data_prep.filters import Filter, FilterConfig, language
    from data_prep.readers import expand_inputs, list_units, read_unit

    fcfg = FilterConfig.preset("code")
    fcfg.languages = [x.lower() for x in cfg.languages]
    if cfg.licenses is not None:
        fcfg.licenses = list(cfg.licenses)
    flt = Filter(fcfg)
    matcher = Matcher(DecontamConfig.parse(cfg.decontaminate)) if cfg.decontaminate else None
    for unit in list_units(expand_inputs(cfg.inputs)):
        for rec in read_unit(unit, cfg.text_key):
            if rec.error is not None:
                drops.add(rec.error, rec.nbytes, rec.loc)
                continue
            lang = language(rec.meta)
            reason = flt.check(rec.text, rec.nbytes, rec.meta, lang, rec.data)
            if reason is None and matcher is not None and matcher.find(rec.data):
                reason = "decontaminated"
            if reason is not None:
                drops.add(reason, rec.nbytes, rec.loc)
                continue
            yield rec.loc, lang, rec.text


def build_prompts(
    cfg: PromptsConfig, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)
) -> dict[str, Any]:
    """Write cfg.output (prompt rows) and its manifest; returns the manifest."""
    from kit.fs import atomic_file, write_text_atomic

    if cfg.style not in STYLES:
        raise ValueError(f"--style {cfg.style!r}: use one of {', '.join(STYLES)}")
    if cfg.lines < 1 or (cfg.limit is not None and cfg.limit < 1):
        raise ValueError(f"--lines {cfg.lines} / --limit {cfg.limit}: use >= 1")
    out = Path(cfg.output)
    if not out.name.endswith(".jsonl"):
        raise ValueError(f"--output {out}: name it *.jsonl (what `inference generate --prompts-file` reads as JSONL)")
    if out.exists() and read_manifest_beside(out, PROMPTS_KIND) is None:
        raise ValueError(
            f"--output {out} exists and was not written by `data_prep prompts` (no {generation_manifest_path(out).name} "
            "beside it): choose another path, or move the file away yourself"
        )
    drops = DropStats()
    seen: set[str] = set()
    files = 0
    with atomic_file(out) as tmp, tmp.open("w") as f:
        for loc, lang, text in _records(cfg, drops):
            files += 1
            extra = {}
            if cfg.style == "oss-instruct":
                seed = oss_instruct_seed(text)
                prompt = None if seed is None else oss_instruct_prompt(seed, lang)
                extra = {"seed": seed}
            else:
                prompt = head_prompt(text, cfg.lines) if cfg.style == "head" else docstring_prompt(text)
            if prompt is None:
                reason = {"head": "too_short", "docstring": "no_docstring_function", "oss-instruct": "blank_file"}
                drops.add(reason[cfg.style], len(text), loc)
                continue
            pid = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:16]
            if pid in seen:
                drops.add("duplicate_prompt", len(prompt), loc)
                continue
            seen.add(pid)
            row = {"id": pid, "prompt": prompt, "source": loc, "lang": lang, "style": cfg.style, **extra}
            f.write(json.dumps(row) + "\n")
            if cfg.limit is not None and len(seen) >= cfg.limit:
                break
        if not seen:  # inside the block: the temporary file goes, an earlier output stays as it was
            reasons = ", ".join(f"{v['docs']} {k}" for k, v in drops.to_dict().items()) or "no input records"
            raise RuntimeError(f"no prompt came out of {files} usable file(s) (dropped: {reasons})")
    manifest = {
        "kind": PROMPTS_KIND,
        "style": cfg.style,
        "lines": cfg.lines if cfg.style == "head" else None,
        "inputs": list(cfg.inputs),
        "text_key": cfg.text_key,
        "languages": cfg.languages,
        "decontaminate": cfg.decontaminate,
        "prompts": len(seen),
        "sha256": sha256_file(str(out)),
        "dropped": drops.to_dict(),
    }
    write_text_atomic(generation_manifest_path(out), dump_json(manifest))
    log(f"{out}: {len(seen):,} prompt(s) ({cfg.style}) from {files:,} usable file(s)")
    for reason, v in drops.to_dict().items():
        log(f"  dropped {v['docs']:,} ({reason}), e.g. {', '.join(v['examples'][:3])}")
    return manifest
