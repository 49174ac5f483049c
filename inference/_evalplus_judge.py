"""EvalPlus's differential test (HumanEval+, MBPP+), run by the trusted judge (inference._judge).

Standard library only (numpy only where EvalPlus itself compares floats with np.allclose): the
source of this file is put before each EvalPlus problem's tests (inference.evalplus.check_source),
so it runs in the judge's process, never in the sample's. The sample's function arrives as the
judge's proxy; what it returns are plain values.

The rules are EvalPlus's `unsafe_execute` and `untrusted_check` (evalplus/eval/__init__.py,
_special_oracle.py): inputs in order, each call under its own time limit max(4.0 s, 4.0 x the
canonical solution's time), each phase (base, then plus) under min(60 s, the sum of its limits)
+ 1 s; `out == exp`, then the per-task special oracles, then the float tolerance: when `atol`
is 0 and the expected value is a float (or a non-empty list/tuple of floats) atol becomes 1e-6,
and a non-exact answer passes only with the same type, the same length and
np.allclose(out, exp, rtol=1e-07, atol=atol). As in EvalPlus, an atol raised to 1e-6 by one
input stays raised for the inputs after it. A phase stops at its first failure (EvalPlus's
fast check); plus runs only if base passed, which is all EvalPlus's plus figure counts
(base_status == plus_status == pass).
"""

import math
import signal
import time

MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
MBPP_OUTPUT_SET_EQ_TASKS = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                            "larg_nnum", "intersection_array", "find_dissimilar", "Diff")  # fmt: skip
PHASE_CAP_S = 60.0  # EvalPlus's EVALPLUS_TIMEOUT_PER_TASK default


class InputTimeout(BaseException):
    """One call, or one phase, ran past its limit. (BaseException: nothing may catch it as a failure.)"""

    kit_self_explained = True  # the judge reports the message alone, not this file's line


class Mismatch(AssertionError):
    """A wrong answer on one input (the message names the phase, the input and both values)."""

    kit_self_explained = True


def _poly(xs, x):  # HumanEval/32's find_zero: the answer is any root
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _surface_area(base_edge, height):  # Mbpp/581: the height as the perpendicular distance to the apex
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant) / 2)


def _digit_distance(num1, num2):  # Mbpp/558: the shorter number padded with zeros
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False  # (EvalPlus also checks numpy arrays: none crosses the boundary)


def matches(dataset: str, entry: str, inp: list, out, exp, atol: float) -> tuple[bool, float]:
    """EvalPlus's verdict for one input: (passed, the atol for the inputs after this one)."""
    exact = out == exp
    if dataset == "mbpp":
        if entry == "are_equivalent":  # Mbpp/164
            exact = True
        elif entry == "sum_div":  # Mbpp/295
            exact = exact or out == 0
        elif entry == "surface_Area":  # Mbpp/581
            exact = exact or abs(out - _surface_area(*inp)) <= atol
        elif entry == "digit_distance_nums":  # Mbpp/558
            exact = exact or out == _digit_distance(*inp)
        elif entry in MBPP_OUTPUT_SET_EQ_TASKS:
            exact = set(out) == set(exp)
        elif entry in MBPP_OUTPUT_NOT_NONE_TASKS:  # the expected value is "not None"
            exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if dataset == "humaneval" and entry == "find_zero":
        return abs(_poly(*inp, out)) <= atol, atol
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        if type(out) is not type(exp) or (isinstance(exp, (list, tuple)) and len(out) != len(exp)):
            return False, atol
        import numpy as np

        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol)), atol
    return bool(exact), atol


def _alarm(signum, frame):
    raise InputTimeout


def run_phase(candidate, phase: str, cases: list, dataset: str, entry: str, atol: float) -> str:
    """Run one phase's cases [(input, expected, limit_s)]; "passed", or raises with the input that failed."""
    budget = min(PHASE_CAP_S, sum(limit for _, _, limit in cases)) + 1.0
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i, (inp, exp, limit) in enumerate(cases):
            left = budget - (time.monotonic() - start)
            if left <= 0:
                raise InputTimeout(f"{phase} inputs ran past the phase's {budget:g} s (at input {i})")
            signal.setitimer(signal.ITIMER_REAL, min(limit, left))
            try:
                out = candidate(*inp)
            except InputTimeout:
                raise InputTimeout(f"{phase} input {i} ran past its {min(limit, left):.3g} s") from None
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            try:
                ok, atol = matches(dataset, entry, inp, out, exp, atol)
            except Exception as e:  # noqa: BLE001 - set() of unhashables, abs() of a str: a wrong answer
                raise Mismatch(f"{phase} input {i}: {type(e).__name__} comparing the answer {_short(out)}") from None
            if not ok and dataset == "humaneval" and entry == "find_zero":
                raise Mismatch(f"{phase} input {i}: {_short(out)} is not a zero (|poly| > {atol:g})")
            if not ok:
                raise Mismatch(f"{phase} input {i}: {_short(out)} != expected {_short(exp)}")
    finally:
        signal.signal(signal.SIGALRM, previous)
    return "passed"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def evalplus_check(candidate, data: dict, parts: dict) -> None:
    """base, then plus; `parts` (the judge's kit_parts) gets each phase's status as it ends."""
    for phase in ("base", "plus"):
        parts[phase] = "failed"
        try:
            parts[phase] = run_phase(candidate, phase, data[phase], data["dataset"], data["entry_point"], data["atol"])
        except InputTimeout:
            parts[phase] = "timeout"
            raise


def oracle() -> None:
    """`python -I -S _evalplus_judge.py`: the canonical solution's outputs and times on every input,
    as EvalPlus's trusted_exec computes them (each input deep-copied; for MBPP's not-None tasks
    the output is whether it is not None). Spec on stdin, result on stdout, both wire-encoded."""
    import copy
    import os
    import sys
    import types

    wire = types.ModuleType("_kit_wire")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_wire.py")
    with open(path) as f:
        exec(compile(f.read(), path, "exec", dont_inherit=True), wire.__dict__)
    spec = wire.loads(sys.stdin.buffer.read())
    import resource

    mem = spec["memory_bytes"]  # EvalPlus's own bound for the solutions it runs (4 GiB)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    sys.path.extend(spec["site_packages"])
    ns: dict = {"__name__": "__canonical__"}
    exec(compile(spec["source"], "<canonical solution>", "exec", dont_inherit=True), ns)
    fn = ns[spec["entry_point"]]
    result = {}
    for phase in ("base", "plus"):
        outs, times = [], []
        for i, inp in enumerate(wire.decode(spec[phase])):
            inp = copy.deepcopy(inp)
            start = time.perf_counter()
            try:
                out = fn(*inp)
            except Exception as e:  # noqa: BLE001 - reported, with the input, as a broken problem
                raise SystemExit(f"the canonical solution raised {type(e).__name__}: {e} on {phase} input {i}") from None
            times.append(time.perf_counter() - start)
            outs.append(out is not None if spec["not_none"] else out)
        try:
            result[phase] = wire.encode(outs)
        except wire.WireError as e:
            raise SystemExit(f"the canonical solution's {phase} outputs cannot cross the sandbox boundary: {e}") from None
        result[phase + "_time"] = times
    sys.stdout.write(wire.dumps(result) + "\n")


if __name__ == "__main__":
    oracle()
