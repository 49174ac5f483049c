"""Run untrusted Python (model-generated code and its tests) in a sandbox, one process per sample.

What a sample gets (strategy "namespaces", the default wherever Linux namespaces are available):
- its own PID namespace (util-linux `unshare --pid --fork --kill-child`): when the sample's main
  process ends or is killed, the kernel kills everything it started; a fork bomb cannot outlive it;
- its own network namespace: no interface but a down loopback, so no network at all;
- its own mount namespace where every mount is read-only except a fresh, size-limited tmpfs on
  its working directory (writes elsewhere fail with EROFS; the tmpfs vanishes with the namespace);
- a fresh /proc (it sees only its own processes, not the environment of the host's);
- resource limits: address space (RLIMIT_AS), CPU seconds (RLIMIT_CPU), file size (RLIMIT_FSIZE),
  processes (RLIMIT_NPROC), no core files; and a wall-clock timeout after which the parent kills
  the process group (SIGKILL), which takes the namespace down with it;
- no privileges: run as root (CI, containers), the sample drops to uid `nobody` (RLIMIT_NPROC is
  not enforced for uid 0, so this is also what bounds a fork bomb); run as a normal user (cluster
  nodes), the namespaces are created inside a user namespace (what enroot/pyxis also need) and the
  sample loses every capability there.

Why not bubblewrap: it is not installed on most cluster nodes, and a user cannot install it; run as
root it maps the sandbox to uid 0, for which the kernel does not enforce RLIMIT_NPROC. `unshare`
ships with util-linux everywhere, and the rest is ~100 lines in `_sandbox_boot.py`.

Fallback, strategy "rlimits": resource limits, a new session and a temporary working directory,
but NO filesystem, network or process-count isolation. Never chosen automatically: only with
`--sandbox rlimits`, for machines without namespaces, on code you trust.

The program passes when it exits 0 *and* prints the sentinel line the harness appends after the
tests, so a completion that calls `sys.exit(0)` or `os._exit(0)` before the tests ran fails.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

BOOT = Path(__file__).with_name("_sandbox_boot.py")
NOBODY = 65534
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
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    strategy: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _spec_limits(limits: Limits) -> dict:
    d = asdict(limits)
    d["cpu_s"] = int(limits.timeout_s) + 1
    return d


def _command(strategy: str, spec: dict, userns: bool) -> list[str]:
    boot = [sys.executable, "-I", "-S", str(BOOT), json.dumps(spec)]
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
    if userns is None:
        userns = default_userns()
    host = Path(tempfile.mkdtemp(prefix="kit-sandbox-"))
    try:
        os.chmod(host, 0o711)  # nobody must traverse it to reach its working directory
        work = host / "work"
        work.mkdir(mode=0o700)
        (work / "main.py").write_text(code)
        spec = {
            "work": str(work),
            "stage": str(host),
            "limits": _spec_limits(limits),
            "isolate": strategy == "namespaces",
            "python": sys.executable,
            "python_prefix": sys.prefix,
            "python_base_prefix": sys.base_prefix,
            "drop_to_uid": None if (userns or strategy != "namespaces") else NOBODY,
            "legacy_remount": legacy_remount,
        }
        with open(host / "stdout", "wb+") as out, open(host / "stderr", "wb+") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                _command(strategy, spec, userns),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=host,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group: one killpg reaches everything
                close_fds=True,
            )
            timed_out = False
            try:
                rc: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = None
            finally:
                _kill_group(proc, strategy)
            wall = time.monotonic() - t0
            stdout, stderr = (_head(f, limits.max_output_bytes) for f in (out, err))
            last_lines = _tail(out, 4096).splitlines()  # the sentinel is the last line printed
    finally:
        shutil.rmtree(host, ignore_errors=True)
    if timed_out:
        status = "timeout"
    elif rc == 0 and (sentinel is None or sentinel in last_lines):
        status = "passed"
    else:
        status = "failed"
    return Result(status, rc, stdout, stderr, wall, strategy)


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
            proc.wait(timeout=10)
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


def default_userns() -> bool:
    """Isolate through a user namespace unless we are root *and* can become `nobody`: not in a
    container that maps a single uid (enroot's --container-remap-root), where setuid(nobody) fails."""
    if os.geteuid() != 0:
        return True
    try:
        for line in Path("/proc/self/uid_map").read_text().splitlines():
            inside, _, count = (int(x) for x in line.split())
            if inside <= NOBODY < inside + count:
                return False
    except (OSError, ValueError):
        pass
    return True


@functools.cache
def probe_namespaces() -> str | None:
    """None if the namespaces strategy works here, else the reason it does not."""
    if shutil.which("unshare") is None:
        return "util-linux `unshare` is not on PATH"
    try:
        r = _run("print('ok')", Limits(timeout_s=20), "namespaces", None, None, False)
    except OSError as e:
        return str(e)
    if r.status != "passed" or r.stdout.strip() != "ok":
        return f"a trial run failed (exit {r.returncode}): {r.stderr.strip()[-500:]}"
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
