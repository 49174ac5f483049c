"""kit/versions.py: the job-start version check of slurm/lib.sh (the SLURM test sees its output in a
real job's log; here its verdicts and its command line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kit.versions import DEVELOPED_AGAINST, installed, main, problems

ROOT = Path(__file__).resolve().parents[1]


def test_an_older_bridge_stops_the_job_with_the_fix():
    (msg,) = problems({"megatron.bridge": "0.5.1"})
    assert "megatron.bridge 0.5.1" in msg and DEVELOPED_AGAINST["megatron-bridge"] in msg and "CONTAINER_IMAGE" in msg
    (msg,) = problems({"megatron.bridge": None})
    assert "not installed" in msg
    assert problems({"megatron.bridge": "0.6.2rc1"}) == problems({"megatron.bridge": "0.7.0+abc"}) == []


def test_this_venv_passes_and_prints_its_versions(capsys):
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    v = installed()
    assert f"megatron.bridge {v['megatron.bridge']}" in out and f"torch {v['torch']}" in out
    assert "transformer_engine (none)" in out and "CUDA (none)" in out  # CPU venv, no TE


def test_setup_reads_the_pins_from_here_without_any_package():
    """scripts/setup.sh evals this before the venv exists: system python, standard library only."""
    out = subprocess.run([sys.executable, "-I", str(ROOT / "kit" / "versions.py"), "--shell"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"MEGATRON_BRIDGE_VERSION={DEVELOPED_AGAINST['megatron-bridge']}" in out.stdout.splitlines()
    assert 'eval "$("$PY" kit/versions.py --shell)"' in (ROOT / "scripts" / "setup.sh").read_text()

