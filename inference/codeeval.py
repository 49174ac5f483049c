"""Functional correctness of generated code: HumanEval-style problems, pass@k, sandboxed tests.

Problems are JSONL, one per line, in HumanEval's format
    {"task_id", "prompt", "test", "entry_point", "canonical_solution" (optional)}
(HumanEval, HumanEval+ / MBPP+ as evalplus exports them, or your own), or MBPP's original format
    {"task_id", "text", "code", "test_list", "test_setup_code" (optional)}
which is turned into a prompt (the description and the first test as a docstring) and a test
(setup code and the asserts). The kit ships `problems/kit_humaneval.jsonl`, small problems
written for it (no benchmark data is redistributed).

A sample's program is `prompt + completion`, then the problem's test, then `check(entry_point)`,
then a sentinel print; it passes if it exits 0 having printed the sentinel (inference.sandbox).

Completions, as the standard harnesses make them:
- raw mode (base and continued-pretrained models): the model continues the prompt; the text is cut
  at the first HumanEval stop sequence ("\\ndef ", "\\nclass ", "\\nif __name__", "\\nprint(", "\\n#"),
  which Codex/HumanEval's harness also uses as stop strings during generation.
- chat mode (SFT models): the problem goes into a harmony user message; the code is the first
  fenced block of the final answer (or the whole answer); if it defines the entry point it replaces
  the prompt, else it is appended to it.

pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as a
product so it is exact for large n; reported for each k <= n.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inference.sandbox import Limits, new_sentinel, run_python

SHIPPED = Path(__file__).with_name("problems") / "kit_humaneval.jsonl"
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (its signature, "
    "docstring and body) in a single ```python code block, without tests or example usage.\n\n"
    "```python\n{prompt}```"
)


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str = ""  # empty: the test is a script of asserts (MBPP), no check() to call
    canonical_solution: str = ""


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Read a JSONL problem file; ValueError naming the line for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such problem file (the kit's own set is {SHIPPED})")
    problems: list[Problem] = []
    seen: set[str] = set()
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: not JSON ({e})") from None
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


def program_for(problem: Problem, completion: str, mode: str, sentinel: str) -> str:
    if (
        mode == "chat"
        and problem.entry_point
        and re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", completion, re.M)
    ):
        body = completion  # the answer is the whole function
    else:
        body = problem.prompt + completion
    check = f"check({problem.entry_point})\n" if problem.entry_point else ""
    return f"{body}\n\n{problem.test}\n\n{check}print({sentinel!r})\n"


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
    from dataclasses import replace

    from gptoss.tokenizer import encoding
    from inference import chat
    from inference.sampling import generate

    if mode not in ("raw", "chat"):
        raise ValueError(f"mode must be raw or chat, got {mode!r}")
    enc = encoding()
    if mode == "raw":
        prompt_ids = [enc.encode(p.prompt, allowed_special="all") for p in problems]
        params = replace(
            params,
            stop_strings=tuple({*params.stop_strings, *HUMANEVAL_STOPS}),
            stop_token_ids=tuple({*params.stop_token_ids, *chat.raw_stop_ids()}),
        )
    else:
        prompt_ids = [
            chat.render_chat(CHAT_INSTRUCTION.format(prompt=p.prompt), reasoning_effort=reasoning_effort)
            for p in problems
        ]
        params = replace(params, stop_token_ids=tuple({*params.stop_token_ids, *chat.chat_stop_ids()}))
    jobs = [(pi, si) for pi in range(len(problems)) for si in range(n)]
    out: list[list[str]] = [[""] * n for _ in problems]
    for b in range(0, len(jobs), batch_size):
        batch = jobs[b : b + batch_size]
        seeds = [params.seed * 1_000_003 + pi * 1009 + si for pi, si in batch]
        gens = generate(backend, [prompt_ids[pi] for pi, _ in batch], params, seeds=seeds)
        for (pi, si), g in zip(batch, gens):
            if mode == "raw":
                out[pi][si] = truncate_completion(g.text)
            else:
                out[pi][si] = extract_code(chat.final_text(g.tokens))
        if progress:
            progress(min(b + batch_size, len(jobs)), len(jobs))
    return out


# ---- scoring --------------------------------------------------------------------------------------


@dataclass
class ProblemResult:
    task_id: str
    n: int
    c: int
    statuses: list[str]
    completions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the tail of stderr of each failed sample


@dataclass
class CodeEvalResult:
    pass_at_k: dict[str, float]
    problems: list[ProblemResult]
    sandbox: str

    def to_dict(self) -> dict:
        return {"pass_at_k": self.pass_at_k, "sandbox": self.sandbox, "problems": [asdict(p) for p in self.problems]}


def score(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    *,
    mode: str = "raw",
    ks: Sequence[int] = (1, 10, 100),
    limits: Limits | None = None,
    strategy: str = "auto",
    workers: int | None = None,
) -> CodeEvalResult:
    """Run every completion against its problem's tests in the sandbox; pass@k for every k <= n."""
    from inference.sandbox import resolve_strategy

    strategy = resolve_strategy(strategy)  # fail before running anything when isolation is missing
    limits = limits or Limits()
    jobs = [(pi, si) for pi, comps in enumerate(completions) for si in range(len(comps))]
    sentinel = new_sentinel()

    def run(job: tuple[int, int]):
        pi, si = job
        return run_python(
            program_for(problems[pi], completions[pi][si], mode, sentinel), limits, strategy, sentinel=sentinel
        )

    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, jobs))
    per: list[ProblemResult] = [ProblemResult(p.task_id, len(c), 0, [], list(c)) for p, c in zip(problems, completions)]
    for (pi, _), r in zip(jobs, results):
        pr = per[pi]
        pr.statuses.append(r.status)
        pr.c += r.passed
        pr.errors.append("" if r.passed else (r.stderr.strip().splitlines() or [r.status])[-1][:300])
    n_min = min(p.n for p in per)
    table = {}
    for k in ks:
        if k <= n_min:
            table[str(k)] = sum(pass_at_k(p.n, p.c, k) for p in per) / len(per)
    return CodeEvalResult(table, per, strategy)


def canonical_completions(problems: Sequence[Problem]) -> list[list[str]]:
    return [[p.canonical_solution] for p in problems]


def k_values(n: int, ks: Sequence[int]) -> list[int]:
    good = sorted({k for k in ks if 1 <= k <= n})
    if not good:
        raise ValueError(f"no k in {list(ks)} is between 1 and n={n}: use --n >= {min(ks)}")
    return good


def summary_line(result: CodeEvalResult) -> str:
    parts = [f"pass@{k} {v:.4f}" for k, v in result.pass_at_k.items()]
    solved = sum(p.c > 0 for p in result.problems)
    return f"{', '.join(parts)}  ({solved}/{len(result.problems)} problems solved at least once; sandbox: {result.sandbox})"
