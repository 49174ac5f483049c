"""Cost per sample of the judged verdict (tests in a trusted process, plain values through a pipe)
against the former single-process verdict (prompt + completion + tests in one sandboxed process,
a printed marker), in the same run, on HumanEval's 164 canonical solutions.

    former   run_python(prompt + solution + test + check + marker print, sentinel=marker)
    judged   codeeval.score (run_judged per sample: the sample's sandbox + the judge process)

Both use the same sandbox (namespaces), limits and worker count; the two are interleaved over
`--repeats` rounds and each side's best round is kept (the machine is shared). Reports seconds per
sample (wall, with the workers in parallel), CPU seconds per sample (children) and the ratio.

    python bench/eval_verdict.py [--repeats 3] [--workers 2] [--baseline DIR]

`--baseline DIR`: a checkout of an earlier version of the kit (`git archive REV | tar -x -C DIR`);
its judged verdict runs in the same rounds, interleaved (each side in a fresh process importing
its own checkout), and the ratio this/baseline is the cost of what changed in between.
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


JUDGED_IN = """
import sys, time
sys.path.insert(0, {root!r})
from inference import codeeval
from inference.problems import humaneval_path, load
from inference.sandbox import resolve_strategy
resolve_strategy("auto")
problems = load("humaneval")
t0 = time.perf_counter()
res = codeeval.score(problems, codeeval.canonical_completions(problems), ks=(1,), workers={workers}, hide=[humaneval_path()])
print(time.perf_counter() - t0, sum(p.c for p in res.problems))
"""


def judged_in(root: Path, workers: int) -> tuple[float, int]:
    """Wall seconds and passes of the judged verdict of the checkout at `root`, in a fresh process."""
    import subprocess

    code = JUDGED_IN.format(root=str(root), workers=workers)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    wall, passed = out.split()[-2:]
    return float(wall), int(passed)


def compare(baseline: Path, repeats: int, workers: int) -> None:
    best: dict[str, float] = {}
    for r in range(repeats):
        for name, root in (("baseline", baseline), ("this", ROOT)):
            wall, passed = judged_in(root, workers)
            if passed != 164:
                raise SystemExit(f"{name} ({root}): {passed}/164 canonical solutions passed, expected all")
            print(f"round {r + 1} {name}: {wall:.2f} s wall for 164 samples", flush=True)
            best[name] = min(best.get(name, wall), wall)
    print(f"load average {os.getloadavg()[0]:.2f}, {workers} workers, 164 HumanEval canonical solutions")
    for name in ("baseline", "this"):
        print(f"{name}: {best[name] / 164 * 1000:.1f} ms/sample wall (best of {repeats})")
    print(f"ratio this/baseline: wall x{best['this'] / best['baseline']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--baseline", type=Path, help="an earlier checkout to compare the judged verdict with")
    args = ap.parse_args()
    if args.baseline:
        return compare(args.baseline.resolve(), args.repeats, args.workers)
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
