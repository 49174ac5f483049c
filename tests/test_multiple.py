"""inference.multiple: MultiPL-E's languages built and run in the sandbox, with verdicts a program
cannot fake by exiting early.

For each language, a problem written for the kit in MultiPL-E's format (its prompt and test
shapes: the closing brace that MultiPL-E's stop tokens cut off opens the tests, where they do) and
five completions: correct, wrong, not building (a syntax error), looping, and exiting with status 0
before the tests finish, which MultiPL-E's own verdict (exit status 0) counts as passed. Each gets
exactly its verdict and its reason. The toolchains come from `make eval-toolchains`; a language
whose toolchain is missing skips with the line naming the package.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from inference import multiple
from inference.multiple import MultiplProblem, load_rows, score_one
from inference.sandbox import probe_namespaces

pytestmark = pytest.mark.skipif(probe_namespaces() is not None, reason=f"namespaces unavailable: {probe_namespaces()}")

# language code -> (prompt, tests, {kind: completion}); kinds: correct, wrong, broken, loop, exit0
CASES = {
    "cpp": (
        "#include<assert.h>\n#include<bits/stdc++.h>\n// Add two numbers\nlong add(long x, long y) {\n",
        "}\nint main() {\n    auto candidate = add;\n    assert(candidate((2), (3)) == (5));\n"
        "    assert(candidate((-1), (1)) == (0));\n}\n",
        {"correct": "    return x + y;\n", "wrong": "    return x - y;\n", "broken": "    return x +;\n",
         "loop": "    volatile int z = 0;\n    while (z == 0) {}\n    return 0;\n", "exit0": "    exit(0);\n"},
    ),
    "java": (
        "import java.util.*;\nimport java.lang.reflect.*;\nimport org.javatuples.*;\nimport java.security.*;\n"
        "import java.math.*;\nimport java.io.*;\nimport java.util.stream.*;\nclass Problem {\n"
        "    // Add two numbers\n    public static long add(long x, long y) {\n",
        "    }\n    public static void main(String[] args) {\n    assert(add((2l), (3l)) == (5l));\n"
        "    assert(add((-1l), (1l)) == (0l));\n    }\n\n}\n",
        {"correct": "        return x + y;\n", "wrong": "        return x - y;\n", "broken": "        return x +;\n",
         "loop": "        while (true) {}\n", "exit0": "        System.exit(0);\n        return 0;\n"},
    ),
    "js": (
        "//Add two numbers\nfunction add(x, y){\n",
        "const assert = require('node:assert');\n\n\nfunction test() {\n  let candidate = add;\n"
        "  assert.deepEqual(candidate(2, 3),5);\n  assert.deepEqual(candidate(-1, 1),0);\n}\n\ntest();",
        {"correct": "  return x + y;\n}\n", "wrong": "  return x - y;\n}\n", "broken": "  return x +;\n}\n",
         "loop": "  while (true) {}\n}\n", "exit0": "  process.exit(0);\n}\n"},
    ),
    "ts": (
        "//Add two numbers\nfunction add(x: number, y: number): number {\n",
        "declare var require: any;\nconst assert = require('node:assert');\nfunction test() {\n  let candidate = add;\n"
        "  assert.deepEqual(candidate(2, 3),5);\n  assert.deepEqual(candidate(-1, 1),0);\n}\n\ntest();",
        {"correct": "  return x + y;\n}\n", "wrong": "  return x - y;\n}\n", "broken": "  return x +;\n}\n",
         "loop": "  while (true) {}\n}\n", "exit0": "  (globalThis as any).process.exit(0);\n  return 0;\n}\n"},
    ),
    "go_test.go": (
        'package add_test\n\nimport (\n    "testing"\n    "fmt"\n)\n\n// Add two numbers\nfunc add(x int, y int) int {\n',
        "}\n\nfunc TestAdd(t *testing.T) {\n  candidate := add\n\ttype test struct {\n\t\tactual   interface{}\n"
        "\t\texpected interface{}\n\t}\n   tests := []test{\n     { actual: candidate(2, 3), expected: 5 },\n"
        "     { actual: candidate(-1, 1), expected: 0 },\n   }\n\n\tfor i, tc := range tests {\n"
        '\t\tt.Run(fmt.Sprintf("test num % d", i), func(t *testing.T) {\n'
        '\t\t\tif fmt.Sprintf("%v", tc.actual) != fmt.Sprintf("%v", tc.expected) {\n'
        "\t\t\t\tt.Errorf(\"expected '%s', got '%s'\", tc.expected, tc.actual)\n\t\t\t}\n\t\t})\n\t}\n}\n",
        # no exit0: a Go completion cannot import os in the middle of the file, and `go test` itself
        # fails a test binary that calls os.Exit(0) (-test.paniconexit0)
        {"correct": "\treturn x + y\n", "wrong": "\treturn x - y\n", "broken": "\treturn x +\n",
         "loop": "\tfor {\n\t}\n"},
    ),
    "rs": (
        "/// Add two numbers\nfn add(x: isize, y: isize) -> isize {\n",
        "}\n\nfn main() {\n    let candidate = add;\n    assert_eq!(candidate(2, 3), 5);\n"
        "    assert_eq!(candidate(-1, 1), 0);\n}\n",
        {"correct": "    x + y\n", "wrong": "    x - y\n", "broken": "    x +\n", "loop": "    loop {}\n",
         "exit0": "    std::process::exit(0)\n"},
    ),
    "php": (
        "<?php\n// Add two numbers\nfunction add($x, $y) {\n",
        "}\nfunction candidate(...$args) {\n    return add(...$args);\n}\n\nfunction test(): void {\n"
        '    if (candidate(2, 3) !== 5) { throw new Exception("Test failed!"); }\n'
        '    if (candidate(-1, 1) !== 0) { throw new Exception("Test failed!"); }\n}\n\ntest();',
        {"correct": "    return $x + $y;\n", "wrong": "    return $x - $y;\n", "broken": "    return $x +;\n",
         "loop": "    while (true) {}\n", "exit0": "    exit(0);\n"},
    ),
    "rb": (
        "# Add two numbers\ndef add(x, y)\n",
        "require 'test/unit'\nclass TestHumanEval < Test::Unit::TestCase\n  def test_add\n"
        "    candidate = method(:add)\n    assert_equal(5, candidate.call(2, 3))\n"
        "    assert_equal(0, candidate.call(-1, 1))\n  end\nend\n",
        {"correct": "  x + y\nend\n", "wrong": "  x - y\nend\n", "broken": "  x + )\nend\n", "loop": "  loop {}\nend\n",
         "exit0": "  exit(0)\nend\n"},
    ),
    "lua": (
        "-- Add two numbers\nlocal function add(x, y)\n",
        "lu = require('luaunit')\n\nfunction test_humaneval()\nlocal candidate = add\n"
        "    lu.assertEquals(candidate(2, 3), 5)\n    lu.assertEquals(candidate(-1, 1), 0)\nend\n\n"
        "os.exit(lu.LuaUnit.run())",
        {"correct": "    return x + y\nend\n", "wrong": "    return x - y\nend\n", "broken": "    return x +\nend\n",
         # exit0 at the top level: luaunit catches an os.exit inside a test itself
         "loop": "    while true do end\nend\n", "exit0": "    return x + y\nend\nos.exit(0)\n"},
    ),
    "sh": (
        "#!/bin/bash\n# Add two numbers\nadd() {\n",
        '}\n\ncandidate() {\n    add "$@"\n}\n\nset -e\nrun_test() {\n    [[ $(candidate "2" "3") = "5" ]]\n'
        '    [[ $(candidate "-1" "1") = "0" ]]\n}\n\nrun_test',
        # exit0: the function runs in $(...), a subshell, so the early exit is at the top level
        {"correct": "    echo $(( $1 + $2 ))\n", "wrong": "    echo $(( $1 - $2 ))\n", "broken": "    echo $(( $1 + ))\n",
         "loop": "    while true; do :; done\n", "exit0": "    echo $(( $1 + $2 ))\n}\nexit 0\n{ :\n"},
    ),
    "py": (
        'def add(x: int, y: int) -> int:\n    """Add two numbers"""\n',
        "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\n"
        "def test_check():\n    check(add)\n\ntest_check()\n",
        {"correct": "    return x + y\n", "wrong": "    return x - y\n", "broken": "    return x +\n",
         "loop": "    while True:\n        pass\n", "exit0": "    import os\n    os._exit(0)\n"},
    ),
}  # fmt: skip
# What each kind must score, and words its reason must hold (for broken: a compiled language's
# build fails, an interpreted one exits non-zero at load)
EXPECTED = {"correct": ("passed", ""), "wrong": ("failed", "exit status"), "loop": ("timeout", "run exceeded"),
            "exit0": ("failed", "before its tests finished")}  # fmt: skip


def problem(code: str) -> MultiplProblem:
    prompt, tests, _ = CASES[code]
    return MultiplProblem(f"kit_add_{code}", code, prompt, tests, ())


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_kind_of_completion_gets_its_verdict(code, monkeypatch):
    lang = multiple.language(code)
    why = multiple.missing_toolchain(lang)
    if why is not None:
        pytest.skip(why)
    got, walls = {}, {}
    for kind, completion in CASES[code][2].items():
        # the loop is cut at a shorter limit than MultiPL-E's: the same verdict, a faster suite
        # (Go compiles inside its run step, `go test`)
        limit = (5.0 if code == "go_test.go" else 2.0) if kind == "loop" else lang.run_timeout_s
        monkeypatch.setitem(multiple.BY_CODE, code, multiple.replace(lang, run_timeout_s=limit))
        v = score_one(problem(code), completion)
        got[kind], walls[kind] = (v.status, v.reason), round(v.wall_s, 2)
    print(code, walls)
    for kind, (status, words) in EXPECTED.items():
        if kind in got:
            assert got[kind][0] == status and words in got[kind][1], (kind, got[kind])
    status, reason = got["broken"]
    assert status == "failed" and ("did not build" in reason if lang.build else "exit status" in reason), reason


def test_multipl_e_counts_the_early_exit_as_passed():
    """The reference behaviour the nonce closes: the same program, scored by exit status alone."""
    if multiple.missing_toolchain(multiple.language("cpp")):
        pytest.skip(multiple.missing_toolchain(multiple.language("cpp")))
    from inference.sandbox import Step, run_steps

    src = CASES["cpp"][0] + CASES["cpp"][2]["exit0"] + CASES["cpp"][1]  # no epilogue: MultiPL-E's program
    r = run_steps({"main.cpp": src}, [Step(("g++", "main.cpp", "-o", "main", "-std=c++17"), 30), Step(("./main",), 15)])
    assert [s["rc"] for s in r.steps] == [0, 0]
    assert score_one(problem("cpp"), CASES["cpp"][2]["exit0"]).status == "failed"


def test_a_compiled_program_sees_no_answer_key_and_cannot_write_outside(tmp_path):
    """The toolchain and the program run in the sandbox's own root: a planted key in /tmp is not
    there, writes outside land nowhere, and a fork bomb stays bounded (C++, the compiled path)."""
    if multiple.missing_toolchain(multiple.language("cpp")):
        pytest.skip(multiple.missing_toolchain(multiple.language("cpp")))
    tag = uuid.uuid4().hex
    key = Path("/tmp") / f"HumanEval-{tag}.jsonl"
    key.write_text('{"canonical_solution": "    return x + y;"}\n')
    escape = tmp_path / f"escape-{tag}"
    try:
        body = (
            f'    FILE* f = fopen("{key}", "r");\n    FILE* g = fopen("{escape}", "w");\n'
            '    if (g) fputs("x", g);\n    for (int i = 0; i < 200; i++) if (fork() == 0) { sleep(5); _exit(0); }\n'
            "    return f ? x + y : x - y;\n"
        )
        prompt = "#include<unistd.h>\n" + CASES["cpp"][0]
        v = score_one(MultiplProblem("k", "cpp", prompt, CASES["cpp"][1], ()), body)
        assert v.status == "failed" and "exit status" in v.reason, v  # the key was not there: x - y
        assert not escape.exists()
        assert v.wall_s < 60
    finally:
        key.unlink()


def test_rows_load_from_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"name": f"HumanEval_0_{c}", "language": c, "prompt": CASES[c][0], "tests": CASES[c][1],
             "stop_tokens": ["\n}"], "doctests": "keep", "original": "x"} for c in ("cpp", "js")]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    for name in ("p.jsonl", "p.parquet"):
        got = load_rows(tmp_path / name)
        assert [(p.name, p.language, p.stop_tokens) for p in got] == [
            ("HumanEval_0_cpp", "cpp", ("\n}",)),
            ("HumanEval_0_js", "js", ("\n}",)),
        ]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "language": "cobol"}) + "\n")
    with pytest.raises(ValueError, match="'cobol' is not one the kit runs"):
        load_rows(tmp_path / "bad.jsonl")
    assert multiple.truncate("    return x;\n}\nint main() {", ["\n}"]) == "    return x;"


def test_a_missing_toolchain_is_one_line_naming_the_package(monkeypatch):
    lang = multiple.replace(multiple.language("rs"), needs=(("/nonexistent/rustc", "rustc"),))
    msg = multiple.missing_toolchain(lang)
    assert msg == "Rust needs rustc: apt-get install rustc (or `make eval-toolchains`)"
    assert os.path.exists("/usr/bin/bash") and multiple.missing_toolchain(multiple.language("sh")) is None
