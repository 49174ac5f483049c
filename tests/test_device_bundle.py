"""The bare GPU host (bench/device_check.sh): the wheel bundle plus the host's own packages hold
everything bench/gpu_check.py imports, and a CUDA machine without Transformer Engine builds
megatron-core's local layers.

The host is simulated here by a virtual environment that holds only the distributions of
bench/device_host.txt and bench/device_bundle.txt (linked from this venv), so a module that the
check imports and neither brings fails to import, as it would there.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "bench" / "device_host.txt"
LOCK = ROOT / "bench" / "device_bundle.txt"
# What the GPU host's interpreter is: the markers of Requires-Dist are evaluated for it.
HOST_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip


def read_list(path: Path) -> dict[str, str | None]:
    """name -> version (None where the list gives no version) of a `name[==version]` file."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        spec = line.split()[0]  # the lock's `--hash=...` follows
        name, _, version = spec.partition("==")
        out[canonicalize_name(name)] = version or None
    return out


def test_lock_pins_every_wheel_by_version_and_hash():
    lines = [ln for ln in LOCK.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines
    for ln in lines:
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[\w.+-]+ --hash=sha256:[0-9a-f]{64}", ln.strip()), ln
    host, bundle = read_list(HOST), read_list(LOCK)
    # the bundle brings only what the host lacks or has in a version the kit cannot use
    for name, version in bundle.items():
        assert name not in host or host[name] != version, f"{name}=={version} is on the host already"
    assert {"megatron-core", "megatron-bridge", "transformers"} <= set(bundle)
    assert bundle["megatron-core"] == "0.19.2" and bundle["megatron-bridge"] == "0.6.2"


def _closure(names: set[str]) -> set[str]:
    """`names` and what they require (Requires-Dist of this venv's metadata, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        for r in requires:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate(HOST_ENV):
                todo.append(canonicalize_name(req.name))
    return seen


def simulate_host(target: Path, allowed: set[str]) -> Path:
    """A venv holding only the `allowed` distributions of this one (symlinked); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    site = next((target / "lib").glob("python3*/site-packages"))
    files = {canonicalize_name(d.metadata["Name"]): (d, list(d.files or [])) for d in md.distributions()}
    owners: dict[str, set[str]] = {}
    for name, (_, fs) in files.items():
        for f in fs:
            owners.setdefault(f.parts[0], set()).add(name)
    for name, (dist, fs) in files.items():
        if name not in allowed:
            continue
        for f in fs:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or top.startswith("__editable__"):
                continue
            whole = owners[top] == {name} or top.endswith(".dist-info")
            link = site / (top if whole else f)  # a shared (namespace) folder: file by file
            src = Path(dist.locate_file(top if whole else f))
            if not link.exists() and not link.is_symlink() and src.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(src.resolve())
    return target / "bin" / "python"


# Everything bench/gpu_check.py runs, in one process: its own imports, the entry points of its
# subprocesses (data_prep, recipes run: the bridge's pretrain), conversion, validation against
# transformers, and a recipe build (which imports what the recipe's config classes need).
IMPORTS = """
import sys
sys.path.insert(0, ".")
from megatron_cpu.compat import import_bridge
import_bridge()
import importlib
for m in ["recipes", "recipes.run", "recipes.gpt_oss", "recipes.planner", "data_prep.__main__", "conversion.megatron_io",
          "conversion.random_init", "conversion.validate", "conversion.streaming", "conversion.mxfp4", "kit.versions",
          "kit.fs", "megatron_cpu.model", "megatron_cpu.training", "megatron.bridge.training.pretrain",
          "megatron.bridge.training.gpt_step", "megatron.bridge.training.checkpointing", "gptoss.tokenizer",
          "transformers.models.gpt_oss.modeling_gpt_oss", "matplotlib.pyplot", "torch.utils.tensorboard"]:
    importlib.import_module(m)
import recipes
recipes.build("gpt_oss_20b_pretrain", [])
from gptoss.tokenizer import encoding  # the o200k file comes from a wheel (no network there)
assert encoding().n_vocab == 201088
import importlib.metadata as md
owners = md.packages_distributions()  # top-level name -> distributions, computed once
print("DISTS", sorted({d for t in {m.split(".")[0] for m in sys.modules} for d in owners.get(t, [])}))
"""


@pytest.mark.training
def test_host_and_bundle_hold_what_the_check_imports(tmp_path):
    host, bundle = read_list(HOST), read_list(LOCK)
    for name, version in bundle.items():  # the simulation links this venv's copy: it must be the locked one
        assert canonicalize_name(name) and md.version(name) == version, f"{name}: venv {md.version(name)}, lock {version}"
    # the host's packages come with what they require (its image is consistent): in the simulation
    # this venv's versions of them may require more than the host's do, so add that
    allowed = _closure(set(host)) | set(bundle) | {"gptoss-kit"}
    python = simulate_host(tmp_path / "host", allowed)
    from gptoss.tokenizer import o200k_gz

    # a fresh cache, and the tokenizer file as bench/device_check.sh brings it (bpe-openai is not there)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPTOSS_KIT_CACHE": str(tmp_path / "cache"), "GPTOSS_KIT_O200K": str(o200k_gz())}
    out = subprocess.run([str(python), "-c", IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = {canonicalize_name(d) for d in re.search(r"DISTS (\[.*\])", out.stdout)[1].strip("[]").replace("'", "").split(", ")}
    assert {"megatron-core", "megatron-bridge", "transformers", "torch"} <= imported
    # versions: every requirement an imported distribution states on another imported one holds for
    # the versions the host will have (the bundle's, else the host's where the list knows it)
    have = {**{n: v for n, v in host.items() if v}, **bundle}
    problems = []
    for name in sorted(imported - {"gptoss-kit"}):
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:  # setuptools' vendored copies (setuptools/_vendor): no install of their own
            continue
        for r in requires:
            req = Requirement(r)
            dep = canonicalize_name(req.name)
            if dep in imported and dep in have and (req.marker is None or req.marker.evaluate(HOST_ENV)):
                if not req.specifier.contains(Version(have[dep]), prereleases=True):
                    problems.append(f"{name} needs {req}, the host would have {dep} {have[dep]}")
    assert not problems, "\n".join(problems)


def test_without_te_on_cuda_the_tiny_recipes_build_local_layers(monkeypatch, capsys):
    """A CUDA machine without Transformer Engine. The GPU is mocked (torch.cuda.is_available answers
    True: this machine has none); TE's absence is real here (megatron_cpu.compat.te_available)."""
    from megatron_cpu.compat import import_bridge, te_available

    import_bridge()
    assert not te_available()
    import recipes
    from megatron_cpu import model as cpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpu, "_SAID_WITHOUT_TE", False)
    for name in ("gpt_oss_tiny_pretrain", "gpt_oss_tiny_sft", "gpt_oss_20b_pretrain"):
        m = recipes.build(name, []).model
        assert m.transformer_impl == "transformer_engine" and m.params_dtype == torch.bfloat16, name
        m.finalize()  # where the hook of megatron_cpu.compat switches
        assert m.transformer_impl == "local" and m.transformer_layer_spec is cpu.local_layer_spec, name
        assert m.params_dtype == torch.bfloat16 and m.bf16 and m.softmax_type == "learnable", name  # bf16, sinks
        assert not m.moe_grouped_gemm and not any(getattr(m, f) for f in cpu.TE_OR_APEX_FUSIONS), name
        assert m.bias_activation_fusion, name  # megatron-core's own fusion stays on a GPU
        spec = m.transformer_layer_spec(m)
        assert spec.submodules.self_attention.submodules.core_attention is cpu.CPUDotProductAttention
        moe = spec.submodules.mlp.keywords["submodules"]
        assert moe.router is cpu.CPUTopKRouter and moe.experts.func is cpu.BiasSafeSequentialMLP
    err = capsys.readouterr().err
    assert err.count("Transformer Engine not installed: using megatron-core's local layers") == 1, err


def test_without_te_refuses_fp8_and_is_inert_on_cpu(monkeypatch):
    from megatron_cpu.compat import import_bridge

    import_bridge()
    import recipes
    from megatron_cpu import model as cpu

    m = recipes.build("gpt_oss_20b_pretrain", []).model
    assert cpu.without_te(m) is m and m.transformer_impl == "transformer_engine"  # no GPU: nothing changes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    m.fp8 = "hybrid"
    with pytest.raises(ValueError, match="fp8='hybrid' needs Transformer Engine.*without the _fp8cs suffix"):
        cpu.without_te(m)


@pytest.mark.slow
def test_bundle_builds_from_the_lock_under_60_mib(tmp_path):
    """bench/device_bundle.sh for real: PyPI's files, checked against the lock's hashes (needs the
    registry, as make setup does)."""
    out = tmp_path / "bundle"
    run = subprocess.run(["bash", "bench/device_bundle.sh"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "BUNDLE_DIR": str(out), "PY": sys.executable})  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    wheels = sorted(p.name for p in out.glob("*.whl"))
    assert len(wheels) == len(read_list(LOCK))
    assert sum(p.stat().st_size for p in out.iterdir()) <= 60 * 2**20
    assert (out / "o200k_base.tiktoken.gz").stat().st_size > 1_000_000
    assert not (tmp_path / "bundle.partial").exists()
    # a folder it did not make is refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    run = subprocess.run(["bash", "bench/device_bundle.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "BUNDLE_DIR": str(mine), "PY": sys.executable})  # fmt: skip
    assert run.returncode == 1 and "was not made by bench/device_bundle.sh" in run.stderr, run.stderr
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
