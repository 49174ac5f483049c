"""The codebase's own rules, checked: one source for each on-disk fact, no import-time Megatron,
no import cycles between the kit's modules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gptoss", "kit", "megatron_cpu", "recipes", "conversion", "data_prep", "inference")


def _python(code: str, cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env or dict(os.environ), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_workspace_default_is_the_checkouts_wherever_a_command_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WORKSPACE"}
    printed = _python("from kit.workspace import root; print(root())", cwd=tmp_path, env=env)
    assert printed.strip() == str(ROOT / "workspace")
    lib = (ROOT / "slurm" / "lib.sh").read_text()
    assert "WORKSPACE=${WORKSPACE:-$KIT_DIR/workspace}" in lib
    assert "export WORKSPACE ?= $(CURDIR)/workspace" in (ROOT / "Makefile").read_text()


def test_the_blend_default_is_the_recipes():
    import recipes
    from data_prep.blend import DEFAULT_BLEND

    prefixes, weights = recipes.build("gpt_oss_20b_cpt_code").dataset.blend
    assert [(Path(p).parent.name, w) for p, w in zip(prefixes, weights)] == [(n, pytest.approx(w)) for n, w in DEFAULT_BLEND]


def test_packed_sft_files_are_named_once():
    import recipes
    from data_prep.sft import packed_paths
    from kit import workspace

    specs = recipes.build("gpt_oss_20b_sft").dataset.offline_packing_specs
    files = packed_paths(workspace.data_dir("sft"), 2048)
    assert Path(specs.packed_train_data_path) == files["train"]
    assert Path(specs.packed_val_data_path) == files["validation"]
    assert Path(specs.packed_metadata_path) == files["metadata"]


MEGATRON_FREE = [
    ("import recipes, recipes.gpt_oss, recipes.planner, gptoss.arch, gptoss.tokenizer, kit.workspace, kit.fs, kit.dist, conversion.megatron_dir", None),
    ("from recipes.__main__ import main; main(['list'])", None),
    ("import inference.__main__, inference.report, inference.codeeval, inference.problems, data_prep.blend", None),
]


@pytest.mark.parametrize("code, _", MEGATRON_FREE)
def test_importing_and_listing_import_no_megatron(code, _):
    out = _python(code + "\nimport sys; print('MEGATRON', sorted(m for m in sys.modules if m.startswith('megatron')))", ROOT)
    assert out.strip().splitlines()[-1] == "MEGATRON []"


@pytest.mark.parametrize("module", ["recipes", "conversion", "data_prep", "inference"])
def test_help_of_every_cli_imports_no_megatron(module):
    code = (
        f"import runpy, sys\nsys.argv = ['{module}', '--help']\n"
        f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('MEGATRON', sorted(m for m in sys.modules if m.startswith('megatron')))"
    )
    out = _python(code, ROOT)
    assert "usage:" in out and out.strip().splitlines()[-1] == "MEGATRON []"


def _imports(path: Path) -> set[str]:
    """Kit modules a file imports, at module level or inside functions (a lazy import is a
    dependency too: two modules that import each other lazily are one tangle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_no_import_cycles_between_modules():
    modules = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = f
    graph = {m: {i for i in _imports(f) if i in modules and i != m} for m, f in modules.items()}
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    raise AssertionError(f"import cycle: {' -> '.join((*path, nxt))}")
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
