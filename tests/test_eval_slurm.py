"""slurm/eval.sh run for real outside SLURM (CONTAINER_IMAGE=none, VLLM_IMAGE=none): it starts the
vLLM server from the venv `make vllm` builds, waits for it, runs `eval code` through the endpoint,
stops the server (no process left) and keeps its log with the job's logs. Skips without that venv.
Also: a model directory that does not exist is exit 2 before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build/venv-vllm"
HAVE_VLLM = (VENV / "bin/python").is_file() and any(VENV.glob(".kit-vllm-*"))


def _env(ws: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(ws), "WORKSPACE": str(ws), "KIT_DIR": str(ROOT),
            "CONTAINER_IMAGE": "none", "VLLM_IMAGE": "none", "KIT_VENV": str(ROOT / ".venv"), **extra}  # fmt: skip


def test_bad_model_dir_is_exit_2(tmp_path):
    r = subprocess.run(["bash", "slurm/eval.sh", str(tmp_path / "nope")], cwd=ROOT, env=_env(tmp_path / "ws"),
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "must be an HF model directory" in r.stderr


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM venv at {VENV}: run `make vllm`")
def test_eval_sh_serves_evaluates_and_stops(tmp_path):
    from conversion.random_init import make_random_hf
    from gptoss.arch import TINY

    model = make_random_hf(tmp_path / "gpt-oss-tiny64", replace(TINY, name="tiny-hd64", head_dim=64))
    ws = tmp_path / "ws"
    env = _env(ws, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", VLLM_START_TIMEOUT="600",
               VLLM_ARGS="--enforce-eager --dtype bfloat16 --max-model-len 1024 --max-num-seqs 8")  # fmt: skip
    args = ["--problems", "humaneval", "--limit", "2", "--max-new-tokens", "8", "--label", "via-eval-sh"]
    r = subprocess.run(["bash", "slurm/eval.sh", str(model), *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "vLLM serves gpt-oss-tiny64" in r.stdout and "vLLM stopped" in r.stdout
    result = json.loads((ws / "results/via-eval-sh/eval_code.json").read_text())
    assert result["endpoint"]["model"] == "gpt-oss-tiny64" and len(result["problems"]) == 2
    log = next((ws / "logs").glob("*/vllm.log"))
    assert "Uvicorn running" in log.read_text() or "Started server process" in log.read_text()
    left = subprocess.run(["pgrep", "-f", "--", f"api_server --model {model}"], capture_output=True, text=True).stdout.split()
    assert not left, f"vLLM processes left: {left}"
