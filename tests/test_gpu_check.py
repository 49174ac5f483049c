"""bench/gpu_check.py --tiny: the prepared GPU check runs end to end on CPU (the GPU-only parts say
why they are skipped), so it cannot break between the sessions that have a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.training
def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    cmd = [sys.executable, "bench/gpu_check.py", "--tiny", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = (tmp_path / "gpu_check_cpu-tiny.md").read_text()
    assert text.startswith("# GPU check on cpu") and "versions: megatron.bridge " in text
    loss = re.search(r"lm loss ([\d.]+) -> ([\d.]+)", text)
    assert loss and float(loss[1]) > 10, text  # random init on the real vocabulary: ~ln(201088)
    assert re.search(r"throughput [\d,]+ tokens/s/GPU", text) and "MFU none" in text
    assert re.search(r"planner estimate [\d.]+ GiB: measured/estimate [\d.]+", text)
    assert "RESULT: PASS" in text and "top-1 agreement 1.0000" in text  # numerics, tiny, fp32 on CPU
    assert text.count("0 mismatched; RESULT: PASS") == 2, text  # bf16 and MXFP4 exports of the run
    assert "skipped: no GPU" in text
