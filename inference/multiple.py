"""MultiPL-E: HumanEval and MBPP translated to other languages, run as MultiPL-E's evaluator runs them,
inside the kit's sandbox, with a verdict that a program cannot fake by exiting early.

Problems are MultiPL-E's rows as its dataset publishes them (`nuprl/MultiPL-E`, configs
`humaneval-<lang>` and `mbpp-<lang>`; JSONL or parquet; users download them, the kit ships none):
{"name", "language", "prompt", "tests", "stop_tokens", ...}. The program is prompt + completion +
"\\n" + tests (MultiPL-E's evaluator), in the row's language, built and run by the commands of
MultiPL-E's `evaluation/src/eval_<lang>.py` (LANGUAGES below: the same compilers, flags and time
limits; the one deviation, the JVM's memory flags, is noted there).

The verdict. MultiPL-E passes a program whose run exits 0, so a completion that calls `exit(0)`,
`System.exit(0)` or `process.exit(0)` before the tests passes there. Here the tests are followed by
an epilogue that reads a per-run nonce from its standard input (Go: its environment, as `go test`
gives the program no stdin) and prints it; a sample passes only
if every step exited 0 and the nonce is among the last lines of its output. The nonce is in no file
and no argument (the sandbox's init writes it to the program's stdin; its spec arrives on a pipe),
so neither the build nor a look at the sources or /proc finds it, and a program that exits before
its tests ran never prints it. What this does not defend against: a completion written to beat the
harness on purpose, which reads its own stdin and prints what it got before exiting; the Python
path (inference._judge) is the one whose verdict no code under test can forge. Exit-early is what
sampled models actually produce (a `main` that calls exit, a stray `process.exit()`), and that is
what this closes.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace  # noqa: F401 - replace: variants of a Language
from pathlib import Path

from inference.problems import Problem
from inference.sandbox import Limits, Result, Step, StepsResult, run_steps

JVM = ("-Xmx256m", "-Xss1m", "-XX:+UseSerialGC", "-XX:ReservedCodeCacheSize=64m", "-XX:MaxMetaspaceSize=192m",
       "-XX:CompressedClassSpaceSize=64m", "-XX:TieredStopAtLevel=1")  # fmt: skip
JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java (MultiPL-E: javatuples 1.2)


def _append(code: str) -> Callable[[str], str]:
    return lambda program: program.rstrip("\n") + "\n" + code + "\n"


def _before_last(close: str, code: str, nth: int = 1) -> Callable[[str], str]:
    """Insert `code` before the nth-last `close` (the closing brace of main, after its assertions)."""

    def insert(program: str) -> str:
        at = len(program)
        for _ in range(nth):
            at = program.rfind(close, 0, at)
            if at < 0:
                return program  # not the shape MultiPL-E writes: no epilogue, so no pass
        return program[:at] + code + "\n" + program[at:]

    return insert


def _go(program: str) -> str:
    """A TestMain that prints the nonce when every test passed (from the environment: `go test`
    gives the test binary no stdin), with its own imports (a package may be imported twice under
    two names, so the problem's own import list stays as it is)."""
    m = re.search(r"^package\s+\w+\s*$", program, re.M)
    if m is None:
        return program
    imports = '\nimport (\n\tkitos "os"\n\tkittesting "testing"\n)\n'
    main = (
        "\nfunc TestMain(m *kittesting.M) {\n\tcode := m.Run()\n\tif code == 0 {\n"
        '\t\tkitos.Stdout.WriteString(kitos.Getenv("KIT_END_OF_TESTS") + "\\n")\n\t}\n\tkitos.Exit(code)\n}\n'
    )
    return program[: m.end()] + imports + program[m.end() :] + main


def _lua(program: str) -> str:
    run = re.search(r"os\.exit\(\s*lu\.LuaUnit\.run\(\)\s*\)\s*$", program)
    if run is None:
        return program
    code = 'local kit_rc = lu.LuaUnit.run()\nif kit_rc == 0 then io.write(io.read("L") or "") end\nos.exit(kit_rc)\n'
    return program[: run.start()] + code


def _php(program: str) -> str:
    code = "echo fgets(STDIN);\n"
    stripped = program.rstrip()
    if stripped.endswith("?>"):
        return stripped[:-2] + code + "?>\n"
    return program.rstrip("\n") + "\n" + code


@dataclass(frozen=True)
class Language:
    """How MultiPL-E builds and runs one language (its evaluation/src/eval_<lang>.py)."""

    name: str
    codes: tuple[str, ...]  # the `language` field of MultiPL-E's rows (and its config suffix)
    file: str  # the program's file name in the working directory
    build: tuple[tuple[str, ...], ...]  # commands before the run (a compiler), each must exit 0
    run: tuple[str, ...]
    run_timeout_s: float = 15.0  # MultiPL-E's default; JS 5 s, Go 30 s
    build_timeout_s: float = 15.0
    epilogue: Callable[[str], str] = field(default=lambda p: p, repr=False)
    needs: tuple[tuple[str, str], ...] = ()  # (a path that must exist, the Debian/npm package that brings it)
    env: tuple[tuple[str, str], ...] = ()
    memory_bytes: int = 1 << 30
    max_processes: int = 64  # threads count too: compilers and runtimes start several
    nonce_in_env: bool = False  # the end-of-tests mark in the run's environment (Go), else on stdin only


LANGUAGES: tuple[Language, ...] = (
    Language("C++", ("cpp",), "main.cpp", (("g++", "main.cpp", "-o", "main", "-std=c++17"),), ("./main",),
             epilogue=_before_last("}", "{ char kit_b[256]; if (fgets(kit_b, sizeof kit_b, stdin)) { fputs(kit_b, stdout); fflush(stdout); } }"),
             needs=(("/usr/bin/g++", "g++"),)),
    # the JVM's memory flags are the kit's: without them it cannot start under the sandbox's 1 GiB
    # address-space limit (it reserves a quarter of RAM for the heap, plus code cache and metaspace)
    Language("Java", ("java",), "Problem.java",
             (("javac", *(f"-J{f}" for f in JVM), "-encoding", "UTF8", "-d", ".", "-cp", JAVATUPLES, "Problem.java"),),
             ("java", *JVM, "-ea", "-cp", f".:{JAVATUPLES}", "Problem"),
             epilogue=_before_last("}", "System.out.println(new java.util.Scanner(System.in).nextLine());", 2),
             needs=(("/usr/bin/javac", "default-jdk-headless"), (JAVATUPLES, "libjavatuples-java"))),
    Language("JavaScript", ("js", "javascript"), "main.js", (), ("node", "main.js"), run_timeout_s=5.0,
             epilogue=_append("process.stdout.write(require('fs').readFileSync(0, 'utf8'));"),
             needs=(("/usr/bin/node", "nodejs"),)),
    Language("TypeScript", ("ts", "typescript"), "main.ts",
             (("tsc", "--target", "esnext", "main.ts"),),
             ("node", "main.js"), build_timeout_s=30.0,
             epilogue=_append("declare var require: any;\nrequire('fs').writeSync(1, require('fs').readFileSync(0, 'utf8'));"),
             needs=(("/usr/bin/node", "nodejs"), ("tsc", "npm:typescript"))),
    Language("Go", ("go", "go_test.go"), "main_test.go", (), ("go", "test", "-v", "main_test.go"), run_timeout_s=30.0,
             epilogue=_go, needs=(("/usr/bin/go", "golang-go"),), max_processes=256, memory_bytes=4 << 30, nonce_in_env=True,
             env=(("GOCACHE", "{work}/.cache/go"), ("GOPATH", "{work}/go"), ("GOPROXY", "off"), ("GOFLAGS", "-count=1"),
                  ("CGO_ENABLED", "0"), ("GO111MODULE", "auto"))),  # fmt: skip
    Language("Rust", ("rs", "rust"), "main.rs", (("rustc", "main.rs", "-o", "main"),), ("./main",),
             build_timeout_s=30.0,
             epilogue=_before_last("}", '{ let mut kit_s = String::new(); std::io::stdin().read_line(&mut kit_s).unwrap(); print!("{}", kit_s); }'),
             needs=(("/usr/bin/rustc", "rustc"),)),
    Language("PHP", ("php",), "main.php", (), ("php", "main.php"), epilogue=_php, needs=(("/usr/bin/php", "php-cli"),)),
    Language("Ruby", ("rb", "ruby"), "main.rb", (), ("ruby", "main.rb"),
             epilogue=_append("Test::Unit::AutoRunner.need_auto_run = false\nkit_ok = Test::Unit::AutoRunner.run\n"
                              "print STDIN.gets if kit_ok\nexit(kit_ok ? 0 : 1)"),
             needs=(("/usr/bin/ruby", "ruby"),)),
    Language("Lua", ("lua",), "main.lua", (), ("lua5.3", "main.lua"), epilogue=_lua,
             needs=(("/usr/bin/lua5.3", "lua5.3"), ("/usr/share/lua/5.3/luaunit.lua", "lua-unit"))),
    Language("Bash", ("sh", "bash"), "main.sh", (), ("bash", "main.sh"),
             epilogue=_append('read -r kit_nonce; echo "$kit_nonce"'), needs=(("/usr/bin/bash", "bash"),)),
    Language("Python", ("py", "python"), "main.py", (), ("python3", "main.py"),
             epilogue=_append("import sys as kit_sys\nprint(kit_sys.stdin.readline().strip(), flush=True)"),
             needs=(("/usr/bin/python3", "python3"),)),
)  # fmt: skip
BY_CODE = {code: lang for lang in LANGUAGES for code in lang.codes}


def language(code: str) -> Language:
    """The Language of a MultiPL-E `language` field; ValueError naming the known ones."""
    try:
        return BY_CODE[code]
    except KeyError:
        known = ", ".join(sorted(BY_CODE))
        raise ValueError(f"MultiPL-E language {code!r} is not one the kit runs; it runs: {known}") from None


def missing_toolchain(lang: Language) -> str | None:
    """None when the language can run here, else one line naming what to install."""
    missing = []
    for path, package in lang.needs:
        found = Path(path).exists() if path.startswith("/") else shutil.which(path) is not None
        if not found:
            missing.append(package)
    if not missing:
        return None
    apt = [p for p in missing if not p.startswith("npm:")]
    npm = [p[4:] for p in missing if p.startswith("npm:")]
    how = " and ".join(
        x
        for x in (f"apt-get install {' '.join(apt)}" if apt else "", f"npm install -g {' '.join(npm)}" if npm else "")
        if x
    )
    return f"{lang.name} needs {', '.join(missing)}: {how} (or `make eval-toolchains`)"


def program(problem: Problem, completion: str) -> str:
    """prompt + completion + "\\n" + tests (MultiPL-E's program), with the end-of-tests epilogue."""
    return language(problem.language).epilogue(problem.prompt + completion + "\n" + problem.test)


def score_one(problem: Problem, completion: str, strategy: str = "auto", **sandbox) -> Result:
    """Build and run one sample of a MultiPL-E problem in the sandbox; see the module docstring
    for the verdict (`reason` says why it did not pass)."""
    lang = language(problem.language)
    why = missing_toolchain(lang)
    if why is not None:
        raise ValueError(why)
    nonce = f"kit-end-of-tests-{uuid.uuid4().hex}"
    steps = [Step(cmd, lang.build_timeout_s) for cmd in lang.build] + [Step(lang.run, lang.run_timeout_s, True, lang.nonce_in_env)]
    limits = Limits(timeout_s=max(s.timeout_s for s in steps), memory_bytes=lang.memory_bytes,
                    max_processes=lang.max_processes)  # fmt: skip
    r = run_steps({lang.file: program(problem, completion)}, steps, limits, strategy, env=dict(lang.env), nonce=nonce,
                  **sandbox)  # fmt: skip
    status, reason = _verdict(r, steps, nonce)
    rc = r.steps[-1]["rc"] if r.steps else None
    return Result(status, rc, r.stdout, r.stderr, r.wall_s, r.strategy, reason)


def _verdict(r: StepsResult, steps: list[Step], nonce: str) -> tuple[str, str]:
    tail = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [""])[-1][:300]
    for i, step in enumerate(steps):
        if i >= len(r.steps):
            return "failed", f"the sandbox stopped before {step.argv[0]}: {tail}"
        got = r.steps[i]
        building = i < len(steps) - 1
        if got["timeout"]:
            return "timeout", f"{'build' if building else 'run'} exceeded {step.timeout_s:g} s"
        if got["rc"] != 0:
            return "failed", f"{'did not build' if building else 'exit status ' + str(got['rc'])}: {tail}"
    if nonce not in [line.strip() for line in r.last_lines]:
        return "failed", "exited 0 before its tests finished (no end-of-tests mark)"
    return "passed", ""


def main(argv: list[str] | None = None) -> int:
    """`python -m inference.multiple --missing-packages`: what `make eval-toolchains` installs."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--missing-packages", action="store_true", help="print 'apt PKG...' and 'npm PKG...' lines")
    args = ap.parse_args(argv)
    if args.missing_packages:
        pkgs = sorted({pkg for lang in LANGUAGES for path, pkg in lang.needs if missing_toolchain(lang) is not None and
                       not (Path(path).exists() if path.startswith("/") else shutil.which(path))})  # fmt: skip
        print("apt", *[p for p in pkgs if not p.startswith("npm:")])
        print("npm", *[p[4:] for p in pkgs if p.startswith("npm:")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
