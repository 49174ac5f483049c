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

from inference import codeeval, multiple
from inference.__main__ import main
from inference.multiple import score_one
from inference.problems import Problem, load_problems
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


def problem(code: str) -> Problem:
    prompt, tests, _ = CASES[code]
    return Problem(f"kit_add_{code}", prompt, tests, language=code)


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


def test_the_end_of_tests_mark_is_not_in_the_environment():
    """Only Go's run (go test gives the program no stdin) has the mark in its environment: a
    JavaScript sample that prints its environment's copy and exits 0 before the tests fails."""
    if multiple.missing_toolchain(multiple.language("js")):
        pytest.skip(multiple.missing_toolchain(multiple.language("js")))
    forge = "  process.stdout.write((process.env.KIT_END_OF_TESTS || 'none') + '\\n');\n  process.exit(0);\n}\n"
    r = score_one(problem("js"), forge)
    assert r.status == "failed" and "before its tests finished" in r.reason, r
    assert r.stdout.strip() == "none"
    assert [lang.name for lang in multiple.LANGUAGES if lang.nonce_in_env] == ["Go"]


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
        v = score_one(Problem("k", prompt, CASES["cpp"][1], language="cpp"), body)
        assert v.status == "failed" and "exit status" in v.reason, v  # the key was not there: x - y
        assert not escape.exists()
        assert v.wall_s < 60
    finally:
        key.unlink()


def _js_rows(stop_tokens=("\nfunction ", "\n/*", "\n//", "\nconsole.log")) -> list[dict]:
    """Two MultiPL-E-style JavaScript rows (MultiPL-E's stop tokens for JS), with the extra fields
    the dataset's rows carry."""
    prompt, tests, _ = CASES["js"]
    sub = (prompt.replace("Add", "Subtract").replace("add", "sub"),
           tests.replace("add", "sub").replace(",5)", ",-1)").replace(",0)", ",-2)"))  # fmt: skip
    return [{"name": name, "language": "js", "prompt": pr, "tests": te, "stop_tokens": list(stop_tokens),
             "doctests": "transform", "original": "x"} for name, pr, te in
            (("HumanEval_0_add", prompt, tests), ("HumanEval_1_sub", *sub))]  # fmt: skip


def test_rows_load_from_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _js_rows() + [{"name": "HumanEval_0_cpp", "language": "cpp", "prompt": CASES["cpp"][0],
                          "tests": CASES["cpp"][1], "stop_tokens": ["\n}"]}]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist([{**r, "doctests": "", "original": ""} for r in rows]), tmp_path / "p.parquet")
    for name in ("p.jsonl", "p.parquet"):
        got = load_problems(tmp_path / name)
        assert [(p.task_id, p.language, p.stop_tokens, p.multipl) for p in got] == [
            ("HumanEval_0_add", "js", ("\nfunction ", "\n/*", "\n//", "\nconsole.log"), True),
            ("HumanEval_1_sub", "js", ("\nfunction ", "\n/*", "\n//", "\nconsole.log"), True),
            ("HumanEval_0_cpp", "cpp", ("\n}",), True),
        ]
        assert got[2].prompt == CASES["cpp"][0] and got[2].test == CASES["cpp"][1] and not got[2].canonical_solution
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "language": "cobol"}) + "\n")
    with pytest.raises(ValueError, match=r"^HumanEval_0_add: MultiPL-E language 'cobol' is not one the kit runs"):
        codeeval.check_toolchains(load_problems(tmp_path / "bad.jsonl"))
    (tmp_path / "stops.jsonl").write_text(json.dumps({**rows[0], "stop_tokens": "\n}"}) + "\n")
    with pytest.raises(ValueError, match=r"stops.jsonl:1: a MultiPL-E row needs .* bad: stop_tokens"):
        load_problems(tmp_path / "stops.jsonl")
    pq.write_table(pa.Table.from_pylist([{"name": "x", "prompt": "p"}]), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match=r"neither MultiPL-E's parquet \(no column language, tests, stop_tokens\)"):
        load_problems(tmp_path / "other.parquet")
    # MultiPL-E's truncation: at the first of the row's stop tokens
    assert codeeval.truncate_completion("    return x;\n}\nint main() {", got[2].stop_tokens) == "    return x;"


def _needs_node():
    why = multiple.missing_toolchain(multiple.language("js"))
    if why:
        pytest.skip(why)


def test_cli_scores_multipl_e_samples_and_bigcode_generations(tmp_path, monkeypatch, capsys):
    """`eval code --problems ROWS --samples FILE` with MultiPL-E rows: human-eval-style JSONL keyed by
    the rows' names, and bigcode-evaluation-harness's generations (whole programs, by position)."""
    _needs_node()
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    rows = _js_rows()
    probs = tmp_path / "humaneval-js.jsonl"
    probs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    right = {"HumanEval_0_add": "  return x + y;\n}\n", "HumanEval_1_sub": "  return x - y;\n}\n"}
    samples = [{"task_id": "HumanEval_0_add", "completion": right["HumanEval_0_add"]},
               {"task_id": "HumanEval_0_add", "completion": "  return x * y;\n}\n"},
               {"task_id": "HumanEval_1_sub", "completion": right["HumanEval_1_sub"]},
               {"task_id": "HumanEval_1_sub", "completion": "  process.exit(0);\n}\n"}]  # fmt: skip
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    assert main(["eval", "code", "--problems", str(probs), "--samples", str(tmp_path / "s.jsonl"), "--k", "1,2"]) == 0
    rec = json.loads((tmp_path / "ws/results/s/eval_code.json").read_text())
    assert rec["languages"] == ["js"] and rec["pass_at_k"] == {"1": 0.5, "2": 1.0}
    assert [p["statuses"] for p in rec["problems"]] == [["passed", "failed"], ["passed", "failed"]]
    assert "exit status" in rec["problems"][0]["errors"][1]
    assert "before its tests finished" in rec["problems"][1]["errors"][1]
    # bigcode's generations: prompt + completion per sample, matched to the rows by position
    gens = [[r["prompt"] + right[r["name"]], r["prompt"] + "  return 0;\n}\n"] for r in rows]
    (tmp_path / "generations.json").write_text(json.dumps(gens))
    assert main(["eval", "code", "--problems", str(probs), "--samples", str(tmp_path / "generations.json"),
                 "--k", "1"]) == 0  # fmt: skip
    rec = json.loads((tmp_path / "ws/results/generations/eval_code.json").read_text())
    assert [p["statuses"] for p in rec["problems"]] == [["passed", "failed"], ["passed", "failed"]]
    # rows have no canonical solution: --canonical says so in one line
    capsys.readouterr()
    assert main(["eval", "code", "--problems", str(probs), "--canonical"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no canonical_solution" in err and "HumanEval_0_add" in err and len(err.splitlines()) == 1


def test_pipeline_generates_each_language_to_its_own_stop_tokens(tmp_path):
    """HumanEval Python and MultiPL-E JavaScript in one run: each problem's completion is cut at its
    own stop strings (JS: "\\nfunction "; Python: HumanEval's), then scored by its own path (the
    trusted judge, the JS program with its tests). A scripted model writes the right body, then
    what a base model writes next."""
    _needs_node()
    from test_eval import ScriptedBackend, _raw_scripts

    from inference.problems import load
    from inference.sampling import SamplingParams

    (tmp_path / "js.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _js_rows()))
    js = load_problems(tmp_path / "js.jsonl")
    py = load("kit")[:2]
    problems = [py[0], js[0], py[1], js[1]]
    body = {"HumanEval_0_add": "  return x + y;\n}\n", "HumanEval_1_sub": "  return x - y;\n}\n"}

    def answer(p):
        if p.multipl:  # a Python-style stop ("\n#") would not cut; JS's "\nfunction " must
            return body[p.task_id] + "\n# not js\nfunction extra() {}\n"
        return p.canonical_solution + "\n\ndef main():\n    print(1)\n"

    backend = ScriptedBackend(_raw_scripts(problems, answer))
    comps = codeeval.sample_completions(backend, problems, 1, SamplingParams(max_new_tokens=200), "raw", batch_size=3)
    assert [c[0] for c in comps] == [py[0].canonical_solution + "\n", body["HumanEval_0_add"] + "\n# not js",
                                      py[1].canonical_solution + "\n", body["HumanEval_1_sub"] + "\n# not js"]  # fmt: skip
    r = codeeval.score(problems, comps, ks=(1,))
    assert [p.statuses for p in r.problems] == [["passed"], ["failed"], ["passed"], ["failed"]]  # "# not js"
    comps = [[c[0].removesuffix("\n# not js")] for c in comps]
    assert codeeval.score(problems, comps, ks=(1,)).pass_at_k == {"1": 1.0}
    with pytest.raises(ValueError, match="--mode chat asks for Python; these problems are MultiPL-E rows in js"):
        codeeval.check_mode(None, "chat", problems)


def test_a_missing_toolchain_is_one_line_naming_the_package(monkeypatch):
    lang = multiple.replace(multiple.language("rs"), needs=(("/nonexistent/rustc", "rustc"),))
    msg = multiple.missing_toolchain(lang)
    assert msg == "Rust needs rustc: apt-get install rustc (or `make eval-toolchains`)"
    assert os.path.exists("/usr/bin/bash") and multiple.missing_toolchain(multiple.language("sh")) is None
