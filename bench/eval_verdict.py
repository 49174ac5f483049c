"""Cost per sample of the judged verdict (tests in a trusted process, plain values through a pipe)
against the former single-process verdict (prompt + completion + tests in one sandboxed process,
a printed marker), in the same run, on HumanEval's 164 canonical solutions.

    former   run_python(prompt + solution + test + check + marker print, sentinel=marker)
    judged   codeeval.score (run_judged per sample: the sample's sandbox + the judge process)

Both use the same sandbox (namespaces), limits and worker count; the two are interleaved over
`--repeats` rounds and each side's best round is kept (the machine is shared). Reports seconds per
sample (wall, with the workers in parallel), CPU seconds per sample (children) and the ratio.

    python bench/eval_verdict.py [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def former(problems, workers: int) -> int:
    from inference.sandbox import Limits, new_sentinel, run_python

    marker = new_sentinel()

    def one(p) -> bool:
        program = f"{p.prompt}{p.canonical_solution}\n\n{p.test}\n\ncheck({p.entry_point})\nprint({marker!r})\n"
        return run_python(program, Limits(), sentinel=marker).passed

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(one, problems))


def judged(problems, workers: int) -> int:
    from inference import codeeval
    from inference.problems import humaneval_path

    res = codeeval.score(
        problems, codeeval.canonical_completions(problems), ks=(1,), workers=workers, hide=[humaneval_path()]
    )
    return sum(p.c for p in res.problems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    from inference.problems import load
    from inference.sandbox import resolve_strategy

    resolve_strategy("auto")  # probe once, outside the timings
    problems = load("humaneval")
    n = len(problems)
    best: dict[str, tuple[float, float]] = {}
    for r in range(args.repeats):
        for name, fn in (("former", former), ("judged", judged)):
            c0, t0 = children_cpu(), time.perf_counter()
            passed = fn(problems, args.workers)
            wall, cpu = time.perf_counter() - t0, children_cpu() - c0
            if passed != n:
                raise SystemExit(f"{name}: {passed}/{n} canonical solutions passed, expected all")
            print(f"round {r + 1} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU for {n} samples", flush=True)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    (fw, fc), (jw, jc) = best["former"], best["judged"]
    print(f"load average {os.getloadavg()[0]:.2f}, {args.workers} workers, {n} HumanEval canonical solutions")
    print(f"former (one process, marker): {fw / n * 1000:.1f} ms/sample wall, {fc / n * 1000:.1f} ms/sample CPU")
    print(f"judged (sample + judge):      {jw / n * 1000:.1f} ms/sample wall, {jc / n * 1000:.1f} ms/sample CPU")
    print(f"ratio judged/former: wall x{jw / fw:.2f}, CPU x{jc / fc:.2f} (budget: x2.00)")


if __name__ == "__main__":
    main()
