"""The codebase's own rules, checked: one source for each on-disk fact, no import-time Megatron,
no import cycles between the kit's modules."""

from __future__ import annotations

import ast
import os
import re
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


# ---- the tests' own rules -------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent


def _test_sources() -> dict[str, str]:
    """{module name: source} of every Python file in tests/ (test modules, helpers, conftest)."""
    return {f.stem: f.read_text() for f in sorted(TESTS.glob("*.py"))}


def _scope_nodes(scope: ast.AST):
    """The nodes of one function (or module) body, without those of the functions defined inside it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def bridge_imports_without_compat(source: str) -> list[int]:
    """Lines that import megatron.bridge with no `import_bridge()` call before them in the same
    function (or module body). Without it the import works only if an earlier test in the same
    process happened to go through megatron_cpu.compat: such a test fails alone or in another order."""
    bad = []
    for scope in ast.walk(ast.parse(source)):
        if not isinstance(scope, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        nodes = list(_scope_nodes(scope))
        calls = [n.lineno for n in nodes
                 if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "import_bridge"]  # fmt: skip
        for n in nodes:
            if isinstance(n, ast.Import):
                modules = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.level == 0:
                modules = [n.module or ""]
            else:
                continue
            if any(m == "megatron.bridge" or m.startswith("megatron.bridge.") for m in modules):
                if not any(line < n.lineno for line in calls):
                    bad.append(n.lineno)
    return sorted(bad)


def test_tests_import_megatron_bridge_through_the_kits_compat():
    bad = {name: lines for name, src in _test_sources().items() if (lines := bridge_imports_without_compat(src))}
    assert not bad, (
        f"tests import megatron.bridge without megatron_cpu.compat.import_bridge() first (module: lines): {bad}; "
        "call import_bridge() before the import, in the same function, as the kit's entry points do"
    )


def test_the_bridge_import_check_catches_a_bare_import():
    bare = "def test_a():\n    from megatron.bridge import AutoBridge\n"
    late = "def test_a():\n    import megatron.bridge.peft.lora as lora\n    import_bridge()\n"
    elsewhere = "def setup():\n    import_bridge()\n\ndef test_a():\n    from megatron.bridge import AutoBridge\n"
    good = (
        "from megatron_cpu.compat import import_bridge\n\n"
        "def test_a():\n    import_bridge()\n    from megatron.bridge import AutoBridge\n"
    )
    assert [bridge_imports_without_compat(s) for s in (bare, late, elsewhere, good)] == [[2], [2], [5], []]


# What `make test-quick` leaves out (besides `slow`): a test that starts one of these, itself or
# through its fixtures and helpers, must carry the marker, or the quick run would start it.
HEAVY_MARKS = ("training", "slurm", "vllm")


def _starts(node: ast.AST) -> set[str]:
    """The heavy things a piece of test code starts by itself: a training run (`python -m recipes
    run|launch` as a command, or a script calling recipes.run.train), the SLURM cluster
    (tests/slurm_cluster.Cluster), a vLLM server (its venv, `make vllm`)."""
    kinds = set()
    # a list inside a comparison is an expected command line, not one that runs
    compared = {id(n) for c in ast.walk(node) if isinstance(c, ast.Compare) for n in ast.walk(c)}
    for n in ast.walk(node):
        if isinstance(n, (ast.List, ast.Tuple)) and id(n) not in compared:
            words = [e.value if isinstance(e, ast.Constant) else None for e in n.elts]
            if any(a == "recipes" and b in ("run", "launch") for a, b in zip(words, words[1:])):
                kinds.add("training")
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            if re.search(r"from recipes\.run import [\w, ]*\btrain\b", n.value):
                kinds.add("training")
            if "vllm.entrypoints" in n.value or "venv-vllm" in n.value:
                kinds.add("vllm")
        elif isinstance(n, ast.Name) and n.id == "Cluster":
            kinds.add("slurm")
    return kinds


def _marks(node: ast.AST) -> set[str]:
    """The names X of the `pytest.mark.X` in a decorator list or a `pytestmark = ...` value."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and getattr(n.value, "attr", None) == "mark"}


def unmarked_heavy_tests(sources: dict[str, str]) -> dict[str, set[str]]:
    """{"module::test": the HEAVY_MARKS it lacks} for every test that reaches something heavy
    through the functions, fixtures (its parameters), constants and test-module imports it names."""
    top: dict[tuple[str, str], ast.AST] = {}
    edges: dict[tuple[str, str], set[tuple[str, str]]] = {}
    trees = {mod: ast.parse(src) for mod, src in sources.items()}
    for mod, tree in trees.items():
        for n in tree.body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                top[(mod, n.name)] = n
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                    if isinstance(t, ast.Name):
                        top[(mod, t.id)] = n
    for mod, tree in trees.items():
        imported = {a.asname or a.name: (n.module, a.name) for n in tree.body
                    if isinstance(n, ast.ImportFrom) and n.module in sources for a in n.names}  # fmt: skip
        for (m, name), node in list(top.items()):
            if m != mod:
                continue
            names = {x.id for x in ast.walk(node) if isinstance(x, ast.Name)}
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names |= {a.arg for a in node.args.args}  # the fixtures it requests
            edges[(mod, name)] = {imported[x] if x in imported else (mod, x) if (mod, x) in top else ("conftest", x)
                                  for x in names if x != name} & set(top)  # fmt: skip
    module_marks = {mod: set().union(*(_marks(n.value) for n in tree.body if isinstance(n, ast.Assign)
                                       and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)))
                    for mod, tree in trees.items()}  # fmt: skip
    missing = {}
    for (mod, name), node in top.items():
        if not (mod.startswith("test_") and name.startswith("test_") and isinstance(node, ast.FunctionDef)):
            continue
        kinds, seen, stack = set(), {(mod, name)}, [(mod, name)]
        while stack:
            here = stack.pop()
            kinds |= _starts(top[here])
            for nxt in edges.get(here, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        marked = module_marks[mod].union(*(_marks(d) for d in node.decorator_list))
        if lacking := kinds - marked:
            missing[f"{mod}::{name}"] = lacking
    return missing


def test_tests_that_train_or_start_slurm_or_vllm_are_marked():
    # this module's own strings are the check's patterns, not commands
    missing = unmarked_heavy_tests({k: v for k, v in _test_sources().items() if k != Path(__file__).stem})
    assert not missing, (
        f"tests that start a training run, the SLURM cluster or vLLM without the marker (`make test-quick` "
        f"would run them): {missing}; add @pytest.mark.<marker> (or a module `pytestmark`)"
    )


def test_the_marker_check_follows_fixtures_helpers_and_imports():
    helpers = (
        "import subprocess, sys\n"
        "SCRIPT = 'from recipes.run import train\\ntrain(cfg)'\n"
        "def run_recipe(*a):\n    return subprocess.run([sys.executable, '-m', 'recipes', 'run', *a])\n"
        "def test_expects_a_command():\n    assert cmd == ['python', '-m', 'recipes', 'run']\n"
    )
    tests = (
        "import pytest\nfrom test_helpers import run_recipe, SCRIPT\nfrom slurm_cluster import Cluster\n"
        "@pytest.fixture\ndef trained():\n    return run_recipe('x')\n"
        "def test_through_a_fixture(trained):\n    pass\n"
        "@pytest.mark.training\ndef test_marked(trained):\n    pass\n"
        "def test_a_script():\n    open('s.py', 'w').write(SCRIPT)\n"
        "@pytest.fixture\ndef cluster():\n    return Cluster()\n"
        "@pytest.mark.slurm\ndef test_a_cluster_job_that_also_trains(cluster, trained):\n    pass\n"
        "def test_quick():\n    assert 1 + 1 == 2\n"
    )
    served = "import pytest\npytestmark = pytest.mark.vllm\nPY = 'build/venv-vllm/bin/python'\ndef test_served():\n    PY\n"
    sources = {"test_helpers": helpers, "test_x": tests, "test_served": served, "slurm_cluster": "class Cluster: ...\n"}
    got = unmarked_heavy_tests(sources)
    assert got == {
        "test_x::test_through_a_fixture": {"training"},
        "test_x::test_a_script": {"training"},
        "test_x::test_a_cluster_job_that_also_trains": {"training"},
    }


def test_test_quick_leaves_out_exactly_the_registered_heavy_markers():
    """`make test-quick` deselects `slow` and HEAVY_MARKS (the ones checked above), all registered."""
    import tomllib

    quick = re.search(r'^test-quick:.*\n(?:\t.*\n)*', (ROOT / "Makefile").read_text(), re.M)
    assert quick, "Makefile: no test-quick target"
    deselected = re.search(r'-m "not \(([^)]*)\)"', quick[0])
    assert deselected, f"Makefile's test-quick has no -m \"not (...)\": {quick[0]}"
    assert set(deselected[1].split(" or ")) == {"slow", *HEAVY_MARKS}
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert {m.split(":")[0] for m in ini["markers"]} >= {"slow", *HEAVY_MARKS}


def test_no_test_fixture_outlives_its_module():
    """tests/conftest.py removes what a module created under the worker's base directory once the
    module is done; a session- or package-scoped fixture would lose its files under the next module."""
    found = [
        f"{path.name}:{node.lineno}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.keyword) and node.arg == "scope"
        and isinstance(node.value, ast.Constant) and node.value.value in ("session", "package")
    ]  # fmt: skip
    assert found == [], found
