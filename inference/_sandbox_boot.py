"""Inside the sandbox: build the program's own root file system, enter it, then exec the program.

Run by inference.sandbox as `python -I -S _sandbox_boot.py` (the spec on stdin, in `marshal` form:
the same interpreter writes and reads it), inside fresh mount, network and PID namespaces
(util-linux `unshare`); this process is PID 1 there, so when it (or what it execs) exits, the
kernel kills every process left in the namespace. Standard library only:
it must not import the kit (it runs before anything is isolated, and must start fast).

Steps, in this order (each one closes a hole the next one relies on):
1. mounts private, so nothing below leaks back to the host;
2. a new, empty root (a small tmpfs) holding only what the harness lists in the spec's `view`
   (inference.sandbox.View): the system's programs and libraries (/usr, read-only), the interpreter
   and its standard library, a few /etc files the dynamic loader and toolchains read, device files
   such as /dev/null, the /proc of this PID namespace; Python's package directories and anything
   the harness names (problem files, the user's directories should they lie inside a bound path)
   covered by something empty;
3. every mount of that root read-only (one recursive mount_setattr, Linux >= 5.12; else one
   remount per mount: the legacy path, same view);
4. a fresh size-limited tmpfs as the program's working directory (/sandbox, also seen as /tmp):
   the only writable place, gone with the namespace;
5. pivot_root into the new root and detach the old one: the host's file system (its /tmp, /home,
   /root, the checkout, the venv, $WORKSPACE) is no longer reachable by any path;
6. resource limits, then privileges dropped for good: setuid to the sample's own uid as root, or, in a user
   namespace, an empty capability bounding set + SECBIT_NOROOT; no_new_privs in both cases;
7. exec the program with an environment of a few fixed variables (never the caller's); or, in
   steps mode (compiled languages: build, then run), run each step as a child and report each
   one's exit status on a pipe the program cannot reach (`_run_steps`).
Any step that fails stops the sample with "sandbox setup: ..." on stderr before the program runs.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 32, 1024, 2048, 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (unified syscall table)
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}  # not unified
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 4, 24, 28, 38
SECBIT_NOROOT, SECBIT_NOROOT_LOCKED = 1, 2


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sandbox setup: {what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _mount_points() -> list[tuple[str, str]]:
    """(mount point, per-mount options) from /proc/self/mountinfo, parents first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            out.append((_unescape(fields[4]), fields[5]))
    return out


def _all_read_only(root: str, legacy: bool) -> None:
    """Every mount at or below `root` read-only."""
    if not legacy:
        attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        ret = libc.syscall(
            SYS_MOUNT_SETATTR, AT_FDCWD, root.encode(), AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
        )
        if ret == 0:
            return
        if ctypes.get_errno() != 38:  # ENOSYS: kernel older than 5.12, use the per-mount path
            _check(ret, "mount_setattr / read-only")
    # One remount per mount, keeping the flags a user namespace is not allowed to clear.
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
            "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}  # fmt: skip
    for target, opts in _mount_points():
        if target != root and not target.startswith(root + "/"):
            continue  # the old root: detached at pivot_root, never reachable
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in opts.split(","):
            flags |= keep.get(opt, 0)
        if libc.mount(None, target.encode(), None, flags, None) != 0:
            # /proc holds kernel files whose writes are checked by permission, not by the mount
            # flag; anything else that stays writable is a hole: fail closed.
            inner = target[len(root) :]
            if not (inner == "/proc" or inner.startswith("/proc/")):
                _check(-1, f"remount {inner or '/'} read-only")


def _make_point(path: str, is_dir: bool) -> None:
    """A mount point inside the new root: a directory, or an empty file for a file to bind."""
    if is_dir:
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if not os.path.lexists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o444))


def _build_root(root: str, view: dict) -> None:
    """The program's whole file system, under `root` (a fresh tmpfs); see inference.sandbox.View."""
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    for path, target in view["links"]:  # merged /usr: /bin -> usr/bin, ...
        os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
        os.symlink(target, root + path)
    for src in view["binds"]:
        dst = root + src
        is_dir = os.path.isdir(src)
        _make_point(dst, is_dir)
        _mount(src, dst, None, MS_BIND | MS_REC)
    for name in view["devices"]:  # character devices of the host's /dev (null, zero, urandom...)
        _make_point(f"{root}/dev/{name}", False)
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{root}/dev/{name}")
    _make_point(root + "/proc", True)
    _mount("/proc", root + "/proc", None, MS_BIND | MS_REC)  # this PID namespace's (unshare --mount-proc)
    for path, text in view["files"]:  # /etc/passwd and the like, written for the sandbox
        os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
        with open(root + path, "w") as f:
            f.write(text)
    empty = root + "/dev/.empty"  # what covers a masked file
    for path in view["masks"]:  # inside a bound path, not to be seen: covered by something empty
        if os.path.isdir(root + path):
            _mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0555,size=4k")
        elif os.path.lexists(root + path):
            _make_point(empty, False)
            _mount(empty, root + path, None, MS_BIND)
    for path in (view["work"], "/tmp"):
        _make_point(root + path, True)


def _pivot(root: str) -> None:
    """Make `root` the root of this mount namespace and detach the old one (pivot_root(".", "."):
    the old root ends up stacked on the new one, and a lazy unmount of "." removes it)."""
    nr = PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(f"sandbox setup: pivot_root: no system call number known for {os.uname().machine}")
    os.chdir(root)
    _check(libc.syscall(nr, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def _drop_capabilities() -> None:
    """User-namespace strategy: we are uid 0 of our own namespace; make sure neither this process
    nor anything it execs keeps a capability (it could otherwise undo the read-only mounts)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0), "securebits")


def _read_spec() -> dict:
    """The spec arrives on stdin (never in argv: /proc/1/cmdline is readable by the program), which
    then becomes /dev/null."""
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return marshal.loads(b"".join(chunks))  # marshal, not json: json's import is a third of this boot's start-up


def _wait(proc, timeout: float) -> int:
    """proc.wait(timeout), returning when the step exits rather than at Popen.wait's next poll
    (sleeps growing to 50 ms); a pidfd becomes readable when the process exits. (inference.sandbox
    has its twin: this file imports nothing of the kit.)"""
    import select
    import subprocess

    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()  # poll, not select: no FD_SETSIZE limit
        poller.register(fd, select.POLLIN)
        ready = poller.poll(timeout * 1000)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def _run_steps(spec: dict, work: str, env: dict) -> None:
    """Steps mode: run each command in turn as a child of this process (PID 1 of the namespace),
    report each one's exit status on the harness's pipe, stop at the first that fails or times out.

    The program cannot forge the report: the pipe is not inherited (close_fds), this process is not
    dumpable (no ptrace, no /proc/1/mem or /proc/1/fd for the program), and the kernel ignores the
    signals a PID namespace's processes send to its init. Between steps, and after a timeout,
    everything else in the namespace is killed (kill(-1) from init reaches every process but it).
    """
    import signal
    import subprocess
    import time

    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")
    report = os.fdopen(spec["report_fd"], "w")

    isolated = spec["isolate"] and os.getpid() == 1

    def clear(proc: subprocess.Popen) -> None:
        # As the PID namespace's init, kill(-1) reaches every process of the sample and nothing
        # else. NEVER outside one (rlimits): there kill(-1) would reach every process of the user,
        # so only the step's own process group is killed.
        try:
            os.kill(-1, signal.SIGKILL) if isolated else os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:  # reap what was killed, and what the steps' processes left to init
            try:
                if os.waitpid(-1, 0)[0] == 0:
                    break
            except ChildProcessError:
                break

    for i, step in enumerate(spec["steps"]):
        stdin, feed = subprocess.DEVNULL, None
        if step.get("nonce_stdin"):  # the end-of-tests mark, for the tests' epilogue to echo
            r, feed = os.pipe()
            stdin = r
        t0 = time.monotonic()
        # the mark in the environment only for a runner that gives the program no stdin (go test):
        # elsewhere a program's environment must not hold it
        step_env = {**env, "KIT_END_OF_TESTS": spec["nonce"]} if step.get("nonce_env") else env
        proc = subprocess.Popen(
            step["argv"], cwd=work, env=step_env, stdin=stdin, close_fds=True, start_new_session=True
        )
        if feed is not None:
            os.close(stdin)
            try:
                os.write(feed, (spec["nonce"] + "\n").encode())
            except BrokenPipeError:
                pass
            os.close(feed)
        try:
            rc, timed_out = _wait(proc, step["timeout_s"]), False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        clear(proc)
        # one JSON line per step, written by hand (no json import: see _read_spec)
        rc_json, timeout_json = "null" if rc is None else str(int(rc)), "true" if timed_out else "false"
        report.write(f'{{"step": {i}, "rc": {rc_json}, "timeout": {timeout_json}, "wall_s": {time.monotonic() - t0:.6f}}}\n')
        report.flush()
        if timed_out or rc != 0:
            break


def main() -> None:
    spec = _read_spec()
    lim = spec["limits"]
    files = {name: open(os.path.join(spec["work"], name), "rb").read() for name in spec["files"]}
    drop_to = spec.get("drop_to_uid")  # root strategy: become this uid; else a user namespace

    if spec["isolate"]:
        root, work = spec["root"], spec["view"]["work"]
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _build_root(root, spec["view"])
        _all_read_only(root, spec.get("legacy_remount", False))
        _mount("tmpfs", root + work, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={lim['disk_bytes']}")
        _mount(root + work, root + "/tmp", None, MS_BIND)  # programs that write to /tmp regardless
        for name, data in files.items():  # plain names (the harness checks): nothing outside work
            with open(os.path.join(root + work, name), "wb") as f:
                f.write(data)
            if drop_to is not None:
                os.chown(os.path.join(root + work, name), drop_to, drop_to)
        if drop_to is not None:
            os.chown(root + work, drop_to, drop_to)
        _pivot(root)
        python = spec["view"]["python"]
    else:  # rlimits: the host's directory (the files are there), no isolation: opt-in, trusted code only
        work, python = spec["work"], spec["python"]
    os.chdir(work)

    def limit(kind: int, value: int) -> None:
        resource.setrlimit(kind, (value, value))

    limit(resource.RLIMIT_AS, lim["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    limit(resource.RLIMIT_FSIZE, lim["max_file_bytes"])
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NOFILE, 256)
    if spec["isolate"]:
        if drop_to is not None:
            os.setgroups([])
            os.setresgid(drop_to, drop_to, drop_to)
            limit(resource.RLIMIT_NPROC, lim["max_processes"])  # counted per uid: the sample's own, not root's
            os.setresuid(drop_to, drop_to, drop_to)  # from root to non-root: all capabilities go
        else:
            limit(resource.RLIMIT_NPROC, lim["max_processes"])
            _drop_capabilities()
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")  # setuid binaries stay unprivileged
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    env.update({k: v.replace("{work}", work) for k, v in spec.get("env", {}).items()})
    if spec.get("steps"):
        _run_steps(spec, work, env)
        return
    flags = ["-I", "-B"] if spec.get("site", True) else ["-I", "-S", "-B"]  # -S: the program sets sys.path itself
    os.execve(python, [python, *flags, "main.py"], env)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:  # the root could not be built: one line, and the program never runs
        msg = str(e) if str(e).startswith("sandbox setup") else f"sandbox setup: {e}"
        os.write(2, (msg.splitlines()[0] + "\n").encode(errors="replace"))
        os._exit(125)
