"""`make setup-gpu` (scripts/setup.sh --cuda), checked without a GPU and without installing anything.

Against PyPI (skipped with the reason where it cannot be reached; CI reaches it): every pin of the
CUDA venv (requirements/gpu.txt, torch and the Megatron wheels of kit/versions.py, the lock) exists for
Linux x86_64 / CPython 3.12, and the pins meet every requirement of torch and of the GPU packages,
markers evaluated for that platform. Why not `pip install --dry-run --report --platform ...`: the index
here lists no core-metadata files, so pip downloads each wheel whole to read its dependencies (torch
527 MB, Transformer Engine 245 MB, cuDNN 366 MB: 3.5 minutes measured for the torch + TE set). These
tests read the same facts through the index's JSON API (PEP 691) and HTTP range requests into each
wheel's zip: its METADATA and directory, about a megabyte per package.

Offline: the checks of `--cuda` stop it (exit 2, one line per missing piece) before it creates the venv.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from kit.versions import DEVELOPED_AGAINST

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"
GPU_TXT = ROOT / "requirements" / "gpu.txt"
LOCK_TXT = ROOT / "requirements" / "lock.txt"
INDEX = "https://pypi.org/simple"
SDIST_ONLY = "transformer-engine-torch"  # scripts/setup.sh builds it; no wheel on PyPI
# What pip accepts for CPython 3.12 on a manylinux_2_28 x86_64 node (glibc 2.28: manylinux_2_28 and older).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]  # fmt: skip
TAGS = frozenset(cpython_tags((3, 12), platforms=PLATFORMS)) | frozenset(compatible_tags((3, 12), platforms=PLATFORMS))
MARKER_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.0", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "implementation_version": "3.12.0", "os_name": "posix",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "platform_release": "",
    "platform_version": "",
}  # fmt: skip


def read_pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a requirements file of `name==version` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def gpu_pins() -> dict[str, str]:
    return read_pins(GPU_TXT)


def venv_pins() -> dict[str, str]:
    """Everything `setup.sh --cuda` installs: the lock, then requirements/gpu.txt over it, torch, Megatron."""
    pins = {**read_pins(LOCK_TXT), **gpu_pins()}
    pins.update({canonicalize_name(k): v for k, v in DEVELOPED_AGAINST.items()})
    return pins


def lock_to_check() -> dict[str, str]:
    """The lock pins the CUDA venv takes whose 3.11 install here is not a pure-Python wheel (those
    install on 3.12 as they are): compiled ones need a 3.12 wheel; ones not installed here are looked up."""
    out = {}
    for name, version in read_pins(LOCK_TXT).items():
        try:
            wheel = importlib.metadata.distribution(name).read_text("WHEEL") or ""
        except importlib.metadata.PackageNotFoundError:
            wheel = ""
        tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
        if name not in gpu_pins() and not (tags and all(t.endswith("-none-any") for t in tags)):
            out[name] = version
    return out


class _HttpRange(io.RawIOBase):
    """A remote file read with HTTP range requests, keeping what it fetched from the end on: a wheel's
    METADATA lies just before its zip directory, so one or two requests read both."""

    def __init__(self, url: str, size: int, tail: int = 1 << 20):
        self.url, self.size, self.pos = url, size, 0
        self.start = max(0, size - tail)
        self.buf = self._get(self.start, size)

    def _get(self, start: int, end: int) -> bytes:
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={start}-{end - 1}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 206, f"{self.url}: the server answers no range requests (HTTP {resp.status})"
            return resp.read()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n < 0 else min(self.size, self.pos + n)
        if self.pos < self.start:  # extend the cached tail down to here, and a little further
            new_start = max(0, self.pos - (1 << 18))
            self.buf = self._get(new_start, self.start) + self.buf
            self.start = new_start
        data = self.buf[self.pos - self.start : end - self.start]
        self.pos = end
        return data


class Index:
    """PyPI's JSON simple API (PEP 691), each project's file list fetched once, many at a time."""

    def __init__(self, url: str = INDEX):
        self.url, self._files, self._lock = url, {}, threading.Lock()

    def files(self, name: str) -> list[dict]:
        name = canonicalize_name(name)
        with self._lock:
            if name in self._files:
                return self._files[name]
        req = urllib.request.Request(f"{self.url}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                files = json.load(resp)["files"]
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            files = []
        with self._lock:
            self._files[name] = files
        return files

    def prefetch(self, names) -> None:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(self.files, names))

    def wheel(self, name: str, version: str) -> dict | None:
        """The file of `name==version` that pip installs on CPython 3.12 / manylinux_2_28 x86_64, if any."""
        return next(self._matching(name, version, ".whl"), None)

    def sdist(self, name: str, version: str) -> dict | None:
        return next(self._matching(name, version, ".tar.gz", ".zip"), None)

    def _matching(self, name: str, version: str, *suffixes: str):
        files = [f for f in self.files(name) if f["filename"].endswith(suffixes) and not f.get("yanked")]
        # The version as written first (parsing every file name of botocore's thousands takes seconds).
        quick = [f for f in files if f"-{version}-" in f["filename"] or f"-{version}." in f["filename"]]
        want = Version(version)
        for f in quick + files:
            try:
                if f["filename"].endswith(".whl"):
                    _, v, _, tags = parse_wheel_filename(f["filename"])
                    ok = bool(tags & TAGS)
                else:
                    v, ok = parse_sdist_filename(f["filename"])[1], True
            except (InvalidWheelFilename, InvalidSdistFilename):  # old uploads (pydantic-0.18-py36+-none-any.whl)
                continue
            if ok and v == want:
                yield f


def wheel_metadata(f: dict) -> Message:
    """METADATA of a wheel on the index, read out of the remote zip (the index lists no PEP 658 files)."""
    wheel = zipfile.ZipFile(_HttpRange(f["url"], f["size"]))
    (name,) = [n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def sdist_members(f: dict, names: tuple[str, ...]) -> dict[str, str]:
    """Some top-level files of an sdist on the index (it is small: read whole, in memory)."""
    with urllib.request.urlopen(f["url"], timeout=120) as resp:
        tar = tarfile.open(fileobj=io.BytesIO(resp.read()))
    top = tar.getnames()[0].split("/")[0]
    out = {n: tar.extractfile(f"{top}/{n}").read().decode() for n in names}
    out["dirs"] = "\n".join(sorted({m.split("/")[1] for m in tar.getnames() if m.count("/") >= 2}))
    return out


def unmet(requirements: list[str], extras: set[str], pins: dict[str, str]) -> list[str]:
    """The requirements (for these extras, on Linux x86_64 / 3.12) that the pins do not meet."""
    out = []
    for text in requirements:
        req = Requirement(text)
        marker = req.marker or Marker("python_version > '0'")
        if not any(marker.evaluate({**MARKER_ENV, "extra": e}) for e in extras | {""}):
            continue
        have = pins.get(canonicalize_name(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            out.append(f"{text} (pinned: {have})")
    return out


@pytest.fixture(scope="module")
def index() -> Index:
    idx = Index()
    try:
        idx.files("pip")
    except OSError as e:
        pytest.skip(f"PyPI's index ({INDEX}) is unreachable from here ({e}): these pins are checked where it is (CI)")
    gpu = {**gpu_pins(), **{canonicalize_name(k): v for k, v in DEVELOPED_AGAINST.items()}}
    idx.prefetch({**gpu, **lock_to_check()})  # at once: each answer takes seconds, the threads wait together
    return idx


def test_every_gpu_pin_exists_for_linux_cpython312(index):
    """A wrong pin in requirements/gpu.txt or kit/versions.py (no such version, or none for this platform) fails."""
    pins = {**gpu_pins(), **{canonicalize_name(k): v for k, v in DEVELOPED_AGAINST.items()}}
    index.prefetch(pins)
    missing = [f"{n}=={v}" for n, v in pins.items() if n != SDIST_ONLY and index.wheel(n, v) is None]
    assert missing == [], f"no wheel for CPython 3.12 / manylinux_2_28 x86_64 on PyPI: {missing}"
    assert index.sdist(SDIST_ONLY, pins[SDIST_ONLY]) is not None, f"{SDIST_ONLY}=={pins[SDIST_ONLY]}: no sdist on PyPI"
    for name in ("megatron-core", "megatron-bridge"):  # installed --no-deps: their Python range still holds
        meta = wheel_metadata(index.wheel(name, pins[name]))
        assert SpecifierSet(meta["Requires-Python"] or "").contains("3.12.0"), (name, meta["Requires-Python"])


def test_the_pins_meet_every_requirement_of_torch_and_the_gpu_packages(index):
    """torch's CUDA pins, Transformer Engine's three parts (one version, the CUDA major of the core wheel's
    name), their own requirements, and what the transformer-engine-torch build needs without isolation.
    Not the Megatron wheels': the kit installs them --no-deps, as in the CPU venv (their lists pull ~50
    packages it does not use)."""
    pins, gpu = venv_pins(), gpu_pins()
    checked = {n: pins[n] for n in [*gpu, "torch"] if n != SDIST_ONLY}
    index.prefetch(checked)
    with ThreadPoolExecutor(16) as pool:
        metas = dict(zip(checked, pool.map(lambda n: wheel_metadata(index.wheel(n, checked[n])), checked)))
    requires = {n: m.get_all("Requires-Dist") or [] for n, m in metas.items()}
    te_torch = sdist_members(index.sdist(SDIST_ONLY, gpu[SDIST_ONLY]), ("PKG-INFO", "pyproject.toml", "setup.py"))
    requires[SDIST_ONLY] = email.parser.Parser().parsestr(te_torch["PKG-INFO"]).get_all("Requires-Dist")

    # Extras asked of a package by the others (torch wants cuda-toolkit[cublas,cudart,...]), to a fixed point.
    extras: dict[str, set[str]] = {n: set() for n in requires}
    for _ in range(3):
        for reqs in requires.values():
            for r in map(Requirement, reqs):
                if (
                    r.extras
                    and canonicalize_name(r.name) in extras
                    and (r.marker is None or r.marker.evaluate(MARKER_ENV))
                ):
                    extras[canonicalize_name(r.name)] |= set(r.extras)
    problems = {n: bad for n, reqs in requires.items() if (bad := unmet(reqs, extras[n], pins))}
    assert problems == {}, f"requirements the pins do not meet: {problems}"

    # Transformer Engine: one version; its core wheel's CUDA major is torch's (cuda-toolkit==13.*).
    (cu,) = [n for n in gpu if re.fullmatch(r"transformer-engine-cu\d+", n)]
    assert gpu["transformer-engine"] == gpu[cu] == gpu[SDIST_ONLY]
    cuda_major = cu.rsplit("cu", 1)[1]
    assert Version(pins["cuda-toolkit"]).major == int(cuda_major), (pins["cuda-toolkit"], cu)
    assert any(Requirement(r).name == "cuda-toolkit" for r in requires["torch"]), (
        "PyPI's torch is no longer the CUDA build"
    )

    # The build runs with --no-build-isolation: its build requirements and setup.py's imports are pinned.
    build = tomllib.loads(te_torch["pyproject.toml"])["build-system"]["requires"]
    assert unmet([r for r in build if Requirement(r).name != "pip"], set(), pins) == []
    local = set(te_torch["dirs"].split())
    imports = set(re.findall(r"^\s*(?:from|import)\s+(\w+)", te_torch["setup.py"], re.M))
    third_party = sorted(imports - set(sys.stdlib_module_names) - local)
    unpinned = [m for m in third_party if canonicalize_name(m) not in pins]
    assert "torch" in third_party and unpinned == [], f"{SDIST_ONLY}'s setup.py imports these unpinned: {unpinned}"


def test_the_lock_installs_on_cpython312(index):
    """The lock was frozen on 3.11: each compiled pin the CUDA venv takes from it has a CPython 3.12 wheel
    (an sdist would need that package's build toolchain on the node)."""
    lock = lock_to_check()
    assert "numpy" in lock and "einops" not in lock, "the kit's venv is not the lock's: run the tests in it"
    index.prefetch(lock)
    missing = [f"{n}=={v}" for n, v in lock.items() if index.wheel(n, v) is None]
    assert missing == [], f"lock pins without a CPython 3.12 / manylinux_2_28 x86_64 wheel on PyPI: {missing}"


def _setup(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDNN_PATH", "PYTHON", "CXX")}
    return subprocess.run(["bash", str(SETUP), *args], env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_cuda_setup_stops_at_its_checks_and_installs_nothing(tmp_path):
    """Each missing piece is one line naming it and the fix; exit 2 before the venv exists. The venv given
    here is a Python 3.11 one (the CPU kind), which --cuda refuses too."""
    venv = tmp_path / "venv"
    cpu_venv = tmp_path / "cpu-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(cpu_venv)], check=True, timeout=60)
    env = {"PYTHON": str(tmp_path / "python3.12"), "CUDA_HOME": str(tmp_path / "no-cuda"),
           "CUDNN_PATH": str(tmp_path / "no-cudnn"), "CXX": "no-such-c++"}  # fmt: skip
    for args in (("--cuda", str(venv)), ("--cuda", "--check", str(venv))):
        out = _setup(*args, env=env)
        assert out.returncode == 2, out.stdout + out.stderr
        lines = out.stderr.splitlines()
        assert lines == [
            f"error: {tmp_path}/python3.12 not found: the CUDA venv needs Python 3.12 (megatron-bridge requires >=3.12,<3.13): module load python/3.12, or set PYTHON=/path/to/python3.12",
            f"error: nvcc not found at {tmp_path}/no-cuda/bin/nvcc (CUDA_HOME={tmp_path}/no-cuda): building transformer-engine-torch needs the CUDA 13 toolkit: module load cuda/13.x, or set CUDA_HOME to its root",
            "error: no C++ compiler (no-such-c++) on PATH: building transformer-engine-torch needs one: module load gcc, or set CXX",
            f"error: no include/cudnn.h under CUDNN_PATH={tmp_path}/no-cudnn: point it at a cuDNN 9 root (module load cudnn), or unset it to use torch's nvidia-cudnn-cu13 wheel",
        ]  # fmt: skip
        assert out.stdout == "" and not venv.exists()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if version != "3.12":  # the kit's own venv is 3.11: a venv of the CPU kind
        before = sorted(str(p) for p in cpu_venv.rglob("*"))
        out = _setup("--cuda", str(cpu_venv), env=env)
        assert out.returncode == 2
        assert (
            f"error: {cpu_venv} is a Python {version} venv (the CPU one of make setup?): move it away, or give --cuda another path (make setup-gpu KIT_VENV=DIR)"
            in out.stderr.splitlines()
        )
        assert sorted(str(p) for p in cpu_venv.rglob("*")) == before


def test_cpu_setup_refuses_the_cuda_venv_and_check_needs_cuda(tmp_path):
    (tmp_path / ".kit-cuda").touch()
    out = _setup(str(tmp_path), env={})
    assert out.returncode == 2 and out.stderr.startswith(f"error: {tmp_path} is the CUDA venv of make setup-gpu"), (
        out.stderr
    )
    out = _setup("--check", env={})
    assert (out.returncode, out.stderr) == (
        2,
        "error: --check goes with --cuda: bash scripts/setup.sh --cuda --check\n",
    )


def _cuda_major(nvcc: Path) -> int:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"release (\d+)\.", out).group(1))


def _python312() -> str | None:
    """A Python 3.12 that runs: python3.12 on PATH, else a pyenv one (PATH may hold only pyenv's shim)."""
    candidates = [
        shutil.which("python3.12"),
        *map(str, sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))),
    ]
    for exe in filter(None, candidates):
        out = subprocess.run(
            [exe, "-c", "import sys, venv, ensurepip; print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


@pytest.mark.skipif(not Path("/usr/local/cuda/bin/nvcc").exists(), reason="no CUDA toolkit in /usr/local/cuda here")
def test_cuda_check_passes_with_a_real_toolkit(tmp_path):
    """The positive side of the checks, with this machine's toolkit: a CUDA 13 one passes (nvcc's own
    version), any other is named as the wrong major. Nothing is installed either way."""
    python = _python312()
    if python is None:
        pytest.skip("no Python 3.12 with venv here")
    out = _setup("--cuda", "--check", str(tmp_path / "venv"), env={"PYTHON": python, "CUDA_HOME": "/usr/local/cuda"})
    if _cuda_major(Path("/usr/local/cuda/bin/nvcc")) == 13:
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("checks passed: Python 3.12 (") and "CUDA 13." in out.stdout, out.stdout
    else:
        assert out.returncode == 2 and "requirements/gpu.txt is the CUDA 13 stack" in out.stderr, out.stderr
    assert not (tmp_path / "venv").exists()
