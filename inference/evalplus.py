"""HumanEval+ and MBPP+ scored as EvalPlus scores them, through the trusted judge.

EvalPlus (Liu et al., 2023) keeps each problem's prompt and canonical solution and replaces the
hand-written asserts by inputs: `base_input` (the original benchmark's tests) and `plus_input`
(its generated ones). The expected output of an input is what the canonical solution returns on
it; a sample passes a phase when it gives that output on every input of the phase, compared by
EvalPlus's rules (inference._evalplus_judge), each call within max(4 s, 4 x the canonical
solution's time). It reports two figures: base (HumanEval, MBPP) and plus (HumanEval+, MBPP+: a
sample counts when it passes base and plus).

Here the canonical solution runs once per problem, in a subprocess of its own (trusted benchmark
code, as EvalPlus's trusted_exec runs it, outside the sandbox; bounded to 600 s and 4 GiB), and its outputs and times
become part of the problem's tests. The tests run in the judge, which calls the sample in its
sandbox with plain values (inference.sandbox.run_judged): the comparison never touches an object
of the sample's. The verdict of each phase comes back in the judge's `parts`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inference import _wire
from inference._evalplus_judge import MBPP_OUTPUT_NOT_NONE_TASKS, PHASE_CAP_S
from inference.problems import Problem

JUDGE_PART = Path(__file__).with_name("_evalplus_judge.py")
MIN_TIME_LIMIT_S = 4.0  # EvalPlus's DEFAULT_MIN_TIME_LIMIT
TIME_LIMIT_FACTOR = 4.0  # EvalPlus's DEFAULT_GT_TIME_LIMIT_FACTOR
ORACLE_TIMEOUT_S = 600.0  # the canonical solution on every input of one problem
ORACLE_MEMORY_BYTES = 4 << 30  # address space of that process (EvalPlus's default maximum memory)
SLACK_S = 10.0  # the judge's and the sample's start-up, on a loaded machine


def expected_outputs(problem: Problem) -> dict:
    """{"base": outputs, "base_time": seconds, "plus": ..., "plus_time": ...} of the canonical
    solution; ValueError naming the problem when it fails."""
    import site

    tests = problem.evalplus
    assert tests is not None
    not_none = tests.dataset == "mbpp" and problem.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS
    spec = {"source": problem.prompt + problem.canonical_solution, "entry_point": problem.entry_point,
            "base": _wire.encode(tests.base_input), "plus": _wire.encode(tests.plus_input), "not_none": not_none,
            "memory_bytes": ORACLE_MEMORY_BYTES, "site_packages": [d for d in site.getsitepackages() if os.path.isdir(d)]}  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(JUDGE_PART)], input=_wire.dumps(spec).encode(), capture_output=True,
            timeout=ORACLE_TIMEOUT_S, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                                           "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ValueError(f"{problem.task_id}: the canonical solution took over {ORACLE_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        raise ValueError(f"{problem.task_id}: computing the expected outputs failed: {tail}")
    out = _wire.loads(done.stdout.decode().strip().splitlines()[-1])
    return {k: (_wire.decode(v) if not k.endswith("_time") else v) for k, v in out.items()}


def time_limits(times: Sequence[float]) -> list[float]:
    return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * t) for t in times]


def phase_budget_s(limits: Sequence[float]) -> float:
    """EvalPlus's per-phase timeout: min(60 s, the sum of the inputs' limits) + 1 s."""
    return min(PHASE_CAP_S, sum(limits)) + 1.0


def check_source(problem: Problem, expected: dict) -> tuple[str, float]:
    """The problem's tests for the judge (EvalPlus's differential test with its data), and the
    sample's wall-clock limit: both phases' budgets plus start-up slack."""
    tests = problem.evalplus
    assert tests is not None
    data = {"dataset": tests.dataset, "entry_point": problem.entry_point, "atol": tests.atol}
    budget = SLACK_S
    for phase, inputs in (("base", tests.base_input), ("plus", tests.plus_input)):
        limits = time_limits(expected[phase + "_time"])
        data[phase] = [[inp, exp, lim] for inp, exp, lim in zip(inputs, expected[phase], limits)]
        budget += phase_budget_s(limits)
    source = (
        JUDGE_PART.read_text()
        + f"\n\nKIT_DATA = kit_decode({_wire.dumps(_wire.encode(data))!r})\n\n\n"
        + "def check(candidate):\n    evalplus_check(candidate, KIT_DATA, kit_parts)\n"
    )
    return source, budget


def prepare(problems: Sequence[Problem], workers: int | None = None) -> dict[str, tuple[str, float]]:
    """task_id -> (tests, wall-clock limit) for the EvalPlus problems, the canonical solutions run in
    parallel, once per problem however many samples it has."""
    plus = [p for p in problems if p.evalplus is not None]

    def one(p: Problem) -> tuple[str, float]:
        return check_source(p, expected_outputs(p))

    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as pool:
        return dict(zip((p.task_id for p in plus), pool.map(one, plus)))
