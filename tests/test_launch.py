"""`python -m recipes launch` (recipes/launch.py): NeMo-Run's sbatch script is run by bash with
stand-ins for srun and scontrol, next to the kit's own sbatch script under the same stand-ins, and
the two srun lines are compared word for word after the shell expanded them; the planner refuses
an impossible layout before anything is submitted; the local executor trains the tiny recipe."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_data import write_indexed_dataset

from recipes import launch
from recipes.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
JOB_ID = 123456  # above 20000: MASTER_PORT = 10000 + 123456 % 20000
IMAGE = subprocess.run(
    ["bash", "-c", f"source {ROOT}/slurm/defaults.env; printf %s $DEFAULT_CONTAINER_IMAGE"],
    capture_output=True,
    text=True,
    check=True,
).stdout

# srun records its words and environment (one file per call) and answers the template's hostname
# step; scontrol knows two nodes; the venv's python stands in for the planner of the kit's script.
SRUN = """#!/usr/bin/env bash
n=$(ls "$STUB_OUT" | wc -l)
printf '%s\\0' "$@" > "$STUB_OUT/srun.$n"
env -0 > "$STUB_OUT/srun.$n.env"
echo 10.0.0.1
"""
SCONTROL = """#!/usr/bin/env bash
trap '' PIPE  # lib.sh reads the first line only (real scontrol writes small outputs at once)
case "$1 $2" in
  "show hostnames") printf 'gpu-a01\\ngpu-a02\\n' ;;
  "show node") echo "NodeName=$3 Arch=x86_64 NodeAddr=10.0.0.$((${3: -1})) NodeHostName=$3" ;;
  *) echo "unexpected: scontrol $*" >&2; exit 1 ;;
esac
exit 0
"""


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    for path, text in [
        (bin_dir / "srun", SRUN),
        (bin_dir / "scontrol", SCONTROL),
        (bin_dir / "sbatch", '#!/bin/sh\ntouch "$STUB_OUT/../sbatch-called"\necho 1\n'),
        (venv / "bin" / "python", "#!/bin/sh\nexit 0\n"),
    ]:
        path.write_text(text)
        path.chmod(0o755)
    (venv / "bin" / "activate").write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path / "nemorun"))
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("KIT_VENV", str(venv))
    monkeypatch.delenv("CONTAINER_IMAGE", raising=False)
    # NeMo-Run runs `mkdir` through invoke, which reads stdin: pytest's would raise
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    return tmp_path


def render(capsys, *argv: str) -> str:
    """The sbatch script of `python -m recipes launch ... --dry-run` (NeMo-Run's, unchanged)."""
    import nemo_run.config

    nemo_run.config.set_nemorun_home(os.environ["NEMORUN_HOME"])  # in case NeMo-Run was imported before
    capsys.readouterr()
    assert main(["launch", *argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def run_batch(stubs: Path, script: Path, job_name: str, *args: str, image: str | None = None) -> tuple[list, dict]:
    """Run an sbatch script as SLURM would on a 2x8 allocation; the words and environment of its
    last srun (the training step)."""
    out = stubs / f"calls-{job_name}"
    out.mkdir()
    env = {
        **os.environ,
        "STUB_OUT": str(out),
        "KIT_DIR": str(ROOT),
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": str(JOB_ID),
        "SLURM_JOB_NAME": job_name,
        "SLURM_JOB_NODELIST": "gpu-a[01-02]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_PER_NODE": "8",
    }
    for var in ("MASTER_ADDR", "MASTER_PORT", "CONTAINER_IMAGE"):
        env.pop(var, None)
    if image:
        env["CONTAINER_IMAGE"] = image
    done = subprocess.run(["bash", str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = max(int(p.name.split(".")[1]) for p in out.glob("srun.*.env"))
    words = (out / f"srun.{last}").read_bytes().decode().split("\0")[:-1]
    step_env = dict(kv.split("=", 1) for kv in (out / f"srun.{last}.env").read_bytes().decode().split("\0") if kv)
    return words, step_env


def options(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """srun's options (the last of a repeated one wins, as in srun) and the task's command."""
    opts, i = {}, 0
    while words[i].startswith("--"):
        name, eq, value = words[i][2:].partition("=")
        if not eq:
            i, value = i + 1, words[i + 1]
        opts[name] = value
        i += 1
    return opts, words[i:]


@pytest.mark.parametrize("image", [None, "none"])
def test_slurm_script_runs_the_scripts_srun_line(stubs, capsys, image):
    overrides = ["train.train_iters=5", "optimizer.lr=2e-5"]
    flags = ["--container-image", image] if image else []
    text = render(capsys, "gpt_oss_20b_pretrain", *overrides, "--nodes", "2", "--gpus-per-node", "8", *flags)
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text
    assert 'source "$KIT_DIR/slurm/lib.sh"' in text
    assert launch.TASK_ENV in (ROOT / "slurm" / "lib.sh").read_text(), "the per-task prefix is kit_launch's"
    script = stubs / "nemorun.sh"
    script.write_text(text)
    words, env = run_batch(stubs, script, "gptoss-kit.gpt_oss_20b_pretrain", image=image)
    opts, command = options(words)
    ws = os.environ["WORKSPACE"]

    assert opts["ntasks-per-node"] == "8"
    assert opts["output"] == f"{ws}/logs/gptoss-kit.gpt_oss_20b_pretrain-{JOB_ID}/rank-%t.log"
    assert opts["chdir"] == str(ROOT)
    assert command[4:] == ["python", "-m", "recipes", "run", "gpt_oss_20b_pretrain", *overrides]
    assert command[:2] == ["bash", "-c"] and command[3] == "kit"
    if image is None:
        assert opts["container-image"] == IMAGE and IMAGE.startswith("nvcr.io/nvidia/nemo:")
        assert opts["container-mounts"] == f"{ROOT}:{ROOT},{ws}:{ws}"
        assert opts["container-workdir"] == str(ROOT)
        assert command[2] == launch.TASK_ENV
    else:
        assert not [o for o in opts if o.startswith("container")]
        assert command[2] == f"source '{os.environ['KIT_VENV']}/bin/activate'; {launch.TASK_ENV}"
    assert env["MASTER_ADDR"] == "10.0.0.1", "the first node's NodeAddr"
    assert env["MASTER_PORT"] == str(10000 + JOB_ID % 20000)
    assert env["WORKSPACE"] == ws and env["HF_HOME"] == f"{ws}/cache/hf"
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"

    # the kit's own script under the same stand-ins: the same srun line but for NeMo-Run's
    # --wait, the job name in the log directory and the explicit --chdir (the batch shell's cwd there)
    kit_words, kit_env = run_batch(stubs, ROOT / "slurm" / "pretrain_20b.sh", "pretrain_20b", *overrides, image=image)
    kit_opts, kit_command = options(kit_words)
    assert kit_command == command
    assert {k: v for k, v in opts.items() if k not in ("wait", "chdir", "output")} == {
        k: v for k, v in kit_opts.items() if k != "output"
    }
    assert kit_opts["output"] == opts["output"].replace("gptoss-kit.gpt_oss_20b_pretrain", "pretrain_20b")
    for var in ("MASTER_ADDR", "MASTER_PORT", "WORKSPACE", "HF_HOME", "CUDA_DEVICE_MAX_CONNECTIONS", "NCCL_DEBUG"):
        assert env[var] == kit_env[var], var


def test_impossible_layout_submits_nothing(stubs, capsys):
    rc = main(["launch", "gpt_oss_20b_pretrain", "--nodes", "1", "--gpus-per-node", "2", "--account", "a"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "world size 2 is not divisible by TP*PP*CP = 2*4*1 = 8" in err, err[-2000:]
    assert "does not fit 1x2 GPUs (planner exit 3); nothing was submitted" in err
    assert not (stubs / "sbatch-called").exists() and not (stubs / "nemorun").exists()


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.training
@pytest.mark.slow
def test_local_executor_trains_the_tiny_recipe(tmp_path):
    ws = tmp_path / "ws"
    write_indexed_dataset(ws / "data" / "pretrain" / "text_document")
    env = {
        **os.environ,
        "WORKSPACE": str(ws),
        "NEMORUN_HOME": str(tmp_path / "nemorun"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": _port(),  # torchrun on one node picks its own free port; this one is for safety
    }
    cmd = [
        sys.executable,
        "-m",
        "recipes",
        "launch",
        "gpt_oss_tiny_pretrain",
        "train.train_iters=2",
        "--executor",
        "local",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, shlex.join(cmd) + "\n" + out.stdout[-3000:] + out.stderr[-3000:]
    ckpt = ws / "checkpoints" / "gpt-oss-tiny-pretrain" / "latest_checkpointed_iteration.txt"
    assert ckpt.read_text().strip() == "2"
    assert "SUCCEEDED" in out.stderr
