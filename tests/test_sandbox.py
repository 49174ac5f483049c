"""inference.sandbox: generated code is contained, checked by its real effects on this machine.

Each hostile program runs for real: the tests then look for what it tried to leave behind (files
outside its directory, processes, connections to a listening socket) and time it, rather than
trusting its exit status. Every isolation variant this machine supports is exercised: as root the
sample drops to a uid of its own (the path CI takes); the user-namespace path is what a normal user gets
on a cluster node; the legacy remount path is what kernels older than 5.12 get.
"""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from inference.sandbox import Limits, new_sentinel, probe_namespaces, resolve_strategy, run_python

REASON = probe_namespaces()
needs_ns = pytest.mark.skipif(REASON is not None, reason=f"namespaces unavailable here: {REASON}")
IS_ROOT = os.geteuid() == 0

VARIANTS = [
    pytest.param({}, id="default"),  # root: mount/net/pid namespaces + a uid of its own; user: a user namespace
    pytest.param({"userns": True}, id="userns"),
    pytest.param({"legacy_remount": True}, id="legacy-remount"),
]


FORK_BOMB = textwrap.dedent("""
    import os, time
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
""")


def sandboxed_pids() -> set[int]:
    """Sample processes: in another PID namespace than ours, running the sandbox's main.py."""
    own = os.readlink("/proc/self/ns/pid")
    found = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") != own and b"main.py" in Path(f"/proc/{d}/cmdline").read_bytes():
                    found.add(int(d))
            except OSError:  # exited meanwhile, or not ours to inspect
                pass
    return found


class PeakCounter:
    """Samples the number of sandboxed processes every 5 ms while a test runs."""

    def __enter__(self):
        self.before = len(sandboxed_pids())
        self.peak = self.before
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, len(sandboxed_pids()))
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


@needs_ns
def test_auto_picks_namespaces_and_rlimits_only_on_request():
    assert resolve_strategy("auto") == "namespaces"
    assert resolve_strategy("rlimits") == "rlimits"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_strategy("docker")


@needs_ns
@pytest.mark.parametrize("variant", VARIANTS)
def test_pass_needs_exit_0_and_the_sentinel(variant):
    s = new_sentinel()
    assert run_python(f"print({s!r})", sentinel=s, **variant).passed
    early_exit = f"import sys\nsys.exit(0)\nprint({s!r})"
    r = run_python(early_exit, sentinel=s, **variant)
    assert r.returncode == 0 and r.status == "failed"  # exit 0 without the tests having run
    r = run_python(f"import os\nos._exit(0)\nprint({s!r})", sentinel=s, **variant)
    assert r.status == "failed"
    chatty = f"print('x' * 100_000)\nprint({s!r})"  # the sentinel after more output than is kept
    assert run_python(chatty, sentinel=s, **variant).passed
    r = run_python("raise AssertionError('wrong answer')", **variant)
    assert r.status == "failed" and "wrong answer" in r.stderr


@needs_ns
@pytest.mark.parametrize("variant", VARIANTS)
def test_infinite_loop_is_killed_within_the_limit(variant):
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", Limits(timeout_s=1.5), **variant)
    elapsed = time.monotonic() - t0
    assert r.status == "timeout" and not r.passed
    assert 1.4 < elapsed < 4.0, elapsed


@needs_ns
def test_detached_children_die_with_the_sample():
    marker = f"{time.time_ns() % 10**6}.{os.getpid()}"  # a unique `sleep` argument to look for
    code = textwrap.dedent(f"""
        import os, subprocess
        for _ in range(3):
            subprocess.Popen(["sleep", "{marker}"], start_new_session=True)  # escapes the process group
        print("spawned", flush=True)
    """)
    r = run_python(code, Limits(timeout_s=5))
    assert "spawned" in r.stdout
    time.sleep(0.2)
    leftovers = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace"):
                leftovers.append(d)
        except OSError:
            pass
    assert not leftovers, f"processes survived the sandbox: {leftovers}"


@needs_ns
def test_fork_bomb_is_bounded_and_cleaned_up():
    """As root the sample runs as a uid of its own, so RLIMIT_NPROC applies (the kernel never enforces it
    for uid 0); the PID namespace takes every process down when the sample ends."""
    limits = Limits(timeout_s=2, max_processes=16)
    t0 = time.monotonic()
    with PeakCounter() as pc:
        r = run_python(FORK_BOMB, limits)
    elapsed = time.monotonic() - t0
    assert r.status == "timeout" and elapsed < 5.0
    # at most max_processes processes of the sample's uid (its pid 1 included)
    assert 1 <= pc.peak - pc.before <= limits.max_processes, pc.peak
    assert len(sandboxed_pids()) <= pc.before, "fork bomb processes outlived the sample"


@needs_ns
def test_a_fork_bomb_leaves_a_concurrent_sample_its_threads():
    """RLIMIT_NPROC counts every process and thread of a uid machine-wide: samples sharing one uid
    (as they did with `nobody`) shared one budget, and a fork bomb in one made a correct rustc or JVM
    beside it fail. Each sample has a uid of its own (as root: a random one, named in its
    /etc/passwd; in a user namespace: its own namespace's count), so a sample that starts 10 threads
    passes while another sample exhausts its 16 processes (10: each thread reserves ~70 MB of the
    1 GiB address space, its stack and a malloc arena)."""
    threads = textwrap.dedent("""
        import os, pwd, threading
        stop, started = threading.Event(), 0
        try:
            for _ in range(10):
                threading.Thread(target=stop.wait).start()
                started += 1
        finally:
            stop.set()
        print(os.getuid(), pwd.getpwuid(os.getuid()).pw_name, started)
    """)
    limits = Limits(timeout_s=3, max_processes=16)
    out: dict = {}
    bomber = threading.Thread(target=lambda: out.setdefault("bomb", run_python(FORK_BOMB, limits)))
    before = len(sandboxed_pids())
    bomber.start()
    deadline = time.monotonic() + 2
    while len(sandboxed_pids()) - before < limits.max_processes - 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sandboxed_pids()) - before >= limits.max_processes - 2, "the fork bomb never filled its budget"
    r = run_python(threads, limits)
    bomber.join()
    assert out["bomb"].status == "timeout"
    assert r.passed, r.stderr
    uid, name, n = r.stdout.split()
    assert n == "10"
    if IS_ROOT:
        assert int(uid) != 0 and name == "sandbox", r.stdout
        again = run_python("import os; print(os.getuid())")
        assert again.passed and int(again.stdout) != int(uid), "two samples ran as one uid"


@needs_ns
@pytest.mark.parametrize("variant", VARIANTS)
def test_large_allocation_fails_fast(variant):
    t0 = time.monotonic()
    r = run_python(
        "x = bytearray(8 << 30)\nprint('allocated')", Limits(memory_bytes=512 << 20, timeout_s=10), **variant
    )
    assert r.status == "failed" and "MemoryError" in r.stderr and "allocated" not in r.stdout
    assert time.monotonic() - t0 < 5.0


@needs_ns
@pytest.mark.parametrize("variant", VARIANTS)
def test_writes_outside_the_sandbox_are_contained(variant, tmp_path):
    tag = uuid.uuid4().hex
    targets = [
        tmp_path / f"outside-{tag}",  # a directory the test owns
        Path(__file__).resolve().parent / f"escape-{tag}",  # the repository
        Path("/tmp") / f"escape-{tag}",  # world-writable
        Path("/dev/shm") / f"escape-{tag}",
        Path(os.path.expanduser("~")) / f"escape-{tag}",
    ]
    code = textwrap.dedent(f"""
        import ctypes, os
        # try to undo the read-only mounts first (needs a capability the sample must not have)
        libc = ctypes.CDLL(None, use_errno=True)
        remount = libc.mount(None, b"/", None, 32 | 4096, None)  # MS_REMOUNT | MS_BIND, i.e. read-write
        print("remount", remount, flush=True)
        for t in {[str(t) for t in targets]!r}:
            try:
                with open(t, "w") as f:
                    f.write("escaped")
                print("WROTE", t, flush=True)
            except OSError as e:
                print("blocked", t, e.errno, flush=True)
        with open("inside.txt", "w") as f:  # the working directory is writable
            f.write("ok")
        print("inside", open("inside.txt").read(), flush=True)
    """)
    r = run_python(code, **variant)
    assert "inside ok" in r.stdout, r.stderr
    assert "remount -1" in r.stdout
    # /tmp inside is the sample's own tmpfs: a write there lands in it, never in the host's /tmp
    private = {str(Path("/tmp") / f"escape-{tag}")}
    assert not [line for line in r.stdout.splitlines() if line.startswith("WROTE") and line[6:] not in private], r.stdout
    for t in targets:
        assert not t.exists(), f"{t} was written from inside the sandbox"
    # and nothing the sample wrote survives it
    assert not list(Path("/tmp").glob("kit-sandbox-*/work/inside.txt"))


@needs_ns
@pytest.mark.parametrize("variant", VARIANTS)
def test_no_network(variant):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    # no network namespace route: the connect fails at once; the limit only bounds a loaded machine's start-up
    r = run_python(code, Limits(timeout_s=60), **variant)
    assert r.status == "failed" and "connected" not in r.stdout
    with pytest.raises(socket.timeout):
        server.accept()  # nobody knocked
    server.close()


@needs_ns
def test_sample_sees_only_its_own_processes_and_no_privileges():
    code = textwrap.dedent("""
        import os
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
        status = open("/proc/self/status").read()
        cap_eff = [l for l in status.splitlines() if l.startswith("CapEff")][0].split()[1]
        print(len(pids), int(cap_eff, 16), os.getpid())
    """)
    r = run_python(code)
    n_pids, cap_eff, pid = map(int, r.stdout.split())
    assert n_pids <= 2 and cap_eff == 0 and pid == 1, r.stdout


def test_rlimits_fallback_still_limits_time_and_memory():
    """The opt-in fallback for machines without namespaces: no isolation, but limits hold."""
    t0 = time.monotonic()
    assert run_python("while True: pass", Limits(timeout_s=1), "rlimits").status == "timeout"
    assert time.monotonic() - t0 < 3.0
    r = run_python("x = bytearray(8 << 30)", Limits(memory_bytes=512 << 20), "rlimits")
    assert r.status == "failed" and "MemoryError" in r.stderr
    assert run_python("print(1)", strategy="rlimits").passed
