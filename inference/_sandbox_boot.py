"""Inside the sandbox: finish isolating this process, then exec the untrusted program.

Run by inference.sandbox as `python -I _sandbox_boot.py SPEC_JSON`, already inside fresh mount,
network and PID namespaces (util-linux `unshare`); this process is PID 1 there, so when it (or
what it execs) exits, the kernel kills every process left in the namespace. Standard library only:
it must not import the kit (it runs before anything is isolated, and must start fast).

Steps, in this order (each one closes a hole the next one relies on):
1. mounts private, so nothing below leaks back to the host;
2. if we will drop to an unprivileged uid (root strategy): directories on the interpreter's path
   that uid cannot traverse (/root for a pyenv Python) are covered by a tmpfs that holds only the
   interpreter, which also hides the rest of root's home (keys, tokens) from the program;
   files the harness names (the problem file with its tests and solutions) are covered by an empty one;
3. every mount read-only (one recursive mount_setattr, Linux >= 5.12; else one remount per mount);
4. a fresh size-limited tmpfs on the work directory: the only writable place, gone with the namespace;
5. resource limits, then privileges dropped for good: setuid(nobody) as root, or, in a user
   namespace, an empty capability bounding set + SECBIT_NOROOT; no_new_privs in both cases;
6. exec the program.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 32, 1024, 2048, 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (unified syscall table)
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 24, 28, 38
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


def _all_read_only(legacy: bool) -> None:
    if not legacy:
        attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        ret = libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
        if ret == 0:
            return
        if ctypes.get_errno() != 38:  # ENOSYS: kernel older than 5.12, use the per-mount path
            _check(ret, "mount_setattr / read-only")
    # One remount per mount, keeping the flags a user namespace is not allowed to clear.
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
            "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}  # fmt: skip
    for target, opts in _mount_points():
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in opts.split(","):
            flags |= keep.get(opt, 0)
        if libc.mount(None, target.encode(), None, flags, None) != 0:
            # /proc and /sys hold kernel files whose writes are checked by permission, not by the
            # mount flag; anything else that stays writable is a hole: fail closed.
            if not (target in ("/proc", "/sys") or target.startswith(("/proc/", "/sys/"))):
                _check(-1, f"remount {target} read-only")


def _blocked_ancestor(path: str, uid: int) -> str | None:
    """The top-most directory above `path` that `uid` cannot traverse (None if all can be)."""
    parts = os.path.realpath(path).split("/")[1:]
    cur = ""
    for part in parts[:-1]:
        cur += "/" + part
        st = os.stat(cur)
        ok = st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)
        if not ok:
            return cur
    return None


def _expose(paths: list[str], uid: int, stage_root: str) -> None:
    """Make `paths` reachable for `uid` by covering their blocked ancestors with a tmpfs that
    contains only bind mounts of those paths (at the same locations)."""
    blocked: dict[str, list[str]] = {}
    for p in sorted({os.path.realpath(p) for p in paths}):
        a = _blocked_ancestor(os.path.join(p, "x"), uid)
        if a is not None and not any(p.startswith(q + "/") for q in blocked.get(a, [])):
            blocked.setdefault(a, []).append(p)
    n = 0
    for ancestor, inner in blocked.items():
        staged = []
        for p in inner:
            stage = os.path.join(stage_root, f"stage{n}")
            n += 1
            os.mkdir(stage)
            _mount(p, stage, None, MS_BIND | MS_REC)
            staged.append((stage, p))
        _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for stage, p in staged:
            os.makedirs(p, exist_ok=True)
            _mount(stage, p, None, MS_MOVE)


def _hide(paths: list[str], stage_root: str) -> None:
    """Cover each path with something empty (the problem file: the tests and canonical solutions
    must not be readable by the sample): a file with an empty file, a directory with a tmpfs."""
    if not paths:
        return
    empty = os.path.join(stage_root, "empty")
    open(empty, "w").close()
    os.chmod(empty, 0o444)
    for p in paths:
        if os.path.isdir(p):
            _mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0555,size=4k")
        else:
            _mount(empty, p, None, MS_BIND)


def _drop_capabilities() -> None:
    """User-namespace strategy: we are uid 0 of our own namespace; make sure neither this process
    nor anything it execs keeps a capability (it could otherwise undo the read-only mounts)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0), "securebits")


def main() -> None:
    spec = json.loads(sys.argv[1])
    work, lim = spec["work"], spec["limits"]
    program = open(os.path.join(work, "main.py"), "rb").read()
    drop_to = spec.get("drop_to_uid")  # root strategy: become this uid; else a user namespace

    if spec["isolate"]:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        if drop_to is not None:
            _expose([spec["python_prefix"], spec["python_base_prefix"]], drop_to, spec["stage"])
        _hide(spec.get("hide", []), spec["stage"])
        _all_read_only(spec.get("legacy_remount", False))
        _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={lim['disk_bytes']}")
        with open(os.path.join(work, "main.py"), "wb") as f:
            f.write(program)
        if drop_to is not None:
            os.chown(work, drop_to, drop_to)
            os.chown(os.path.join(work, "main.py"), drop_to, drop_to)
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
            limit(resource.RLIMIT_NPROC, lim["max_processes"])  # counted per uid: nobody's, not root's
            os.setresuid(drop_to, drop_to, drop_to)  # from root to non-root: all capabilities go
        else:
            limit(resource.RLIMIT_NPROC, lim["max_processes"])
            _drop_capabilities()
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")  # setuid binaries stay unprivileged
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    flags = ["-I", "-B"] if spec.get("site", True) else ["-I", "-S", "-B"]  # -S: the program sets sys.path itself
    os.execve(spec["python"], [spec["python"], *flags, "main.py"], env)


if __name__ == "__main__":
    main()
