"""The SLURM scripts against a real SLURM cluster (tests/slurm_cluster.py: Debian's slurmctld,
slurmd and munge, two nodes on this machine with fake GPUs), with the tiny recipes on CPU and
CONTAINER_IMAGE=none. Nothing is mocked; pyxis containers are not available here, so the
container branch of slurm/lib.sh is covered only by shellcheck."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from slurm_cluster import Cluster, SlurmUnavailable
from tiny_data import write_indexed_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "slurm").glob("*.sh"))


def test_scripts_pass_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed: run `bash scripts/setup_test_tools.sh` as root (make test does)")
    out = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_each_training_script_allocates_its_recipes_default():
    """`sbatch slurm/X.sh` without flags asks for exactly what its recipe is registered with."""
    import re

    import recipes

    scripts = [p for p in SCRIPTS if "kit_train" in p.read_text() and p.name != "lib.sh"]
    assert len(scripts) == 8
    for script in scripts:
        text = script.read_text()
        (name,) = re.findall(r'kit_train "\$\{RECIPE:-(\w+)\}"', text)
        sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
        r = recipes.get(name)
        got = (int(sbatch["nodes"]), int(sbatch["gpus-per-node"]), int(sbatch["ntasks-per-node"]))
        assert got == (r.nodes, r.gpus_per_node, r.gpus_per_node), f"{script.name}: {got} vs recipe {name}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons must run as root")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no SLURM cluster: {e}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    write_indexed_dataset(ws / "data" / "pretrain" / "text_document")
    return ws


def submit(cluster: Cluster, ws: Path, script: str, *args: str, recipe: str | None = None, sbatch=(), env=None) -> int:
    env = {
        **(env or {}),
        "KIT_DIR": str(ROOT),
        "WORKSPACE": str(ws),
        "CONTAINER_IMAGE": "none",
        "KIT_VENV": str(ROOT / ".venv"),
    }
    if recipe:
        env["RECIPE"] = recipe
    return cluster.sbatch(
        *sbatch, f"--output={ws}/%x-%j.out", "--chdir", str(ROOT), str(ROOT / "slurm" / script), *args, env=env
    )


def output(ws: Path, job: int) -> str:
    return "".join(p.read_text() for p in ws.glob(f"*-{job}.out"))


ONE_CPU = ("--nodes=1", "--gpus-per-node=1", "--ntasks-per-node=1")


ITERS = 8


@pytest.fixture(scope="module")
def reference_job(cluster, ws):
    """One uninterrupted tiny pretraining job (the pre-emption test compares against it)."""
    ckpt = ws / "checkpoints" / "ref"
    job = submit(
        cluster,
        ws,
        "pretrain_20b.sh",
        f"train.train_iters={ITERS}",
        f"checkpoint.save={ckpt}",
        f"checkpoint.load={ckpt}",
        recipe="gpt_oss_tiny_pretrain",
        sbatch=ONE_CPU,
    )
    return job, cluster.wait(job, timeout=900)


@pytest.mark.slurm
def test_tiny_pretrain_job_completes_with_a_checkpoint(reference_job, ws):
    job, info = reference_job
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output(ws, job)
    tracker = ws / "checkpoints" / "ref" / "latest_checkpointed_iteration.txt"
    assert tracker.read_text().strip() == str(ITERS)
    logs = ws / "logs" / f"pretrain_20b-{job}"
    rank0 = (logs / "rank-0.log").read_text()
    assert f"iteration {ITERS:8d}/{ITERS:8d}" in rank0
    # task 0 printed the venv's versions first (kit/versions.py), before training started
    from kit.versions import installed

    v = installed()
    line = next(x for x in rank0.splitlines() if x.startswith("versions: "))
    assert line.startswith(f"versions: megatron.bridge {v['megatron.bridge']}, megatron.core {v['megatron.core']}, ")
    assert f"torch {v['torch']}" in line and rank0.index("versions: ") < rank0.index("iteration ")


@pytest.mark.slurm
def test_a_layout_that_does_not_fit_fails_in_the_batch_shell(cluster, ws):
    job = submit(cluster, ws, "pretrain_20b.sh", sbatch=("--nodes=1", "--gpus-per-node=2", "--ntasks-per-node=2"))
    info = cluster.wait(job, timeout=600)
    text = output(ws, job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "3:0", text
    assert "world size 2 is not divisible by TP*PP*CP = 2*4*1 = 8" in text
    assert "nothing was launched" in text
    assert not list((ws / "logs" / f"pretrain_20b-{job}").glob("rank-*.log")), "no task may start"


@pytest.mark.slurm
def test_two_nodes_join_one_process_group(cluster, ws):
    """Also: a MASTER_ADDR/PORT left in the submitting shell (sbatch exports it) must not be used:
    here the port is taken by a listening socket, as the CI failure that motivated this had it."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        stale = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(busy.getsockname()[1])}
        job = submit(
            cluster,
            ws,
            "check_rendezvous.sh",
            sbatch=("--nodes=2", "--gpus-per-node=1", "--ntasks-per-node=1"),
            env=stale,
        )
        info = cluster.wait(job, timeout=600)
    assert info["JobState"] == "COMPLETED", output(ws, job)
    logs = ws / "logs" / f"check_rendezvous-{job}"
    lines = [(logs / f"rank-{r}.log").read_text() for r in (0, 1)]
    assert "rank 0/2" in lines[0] and "(node0)" in lines[0] and "all_reduce 1 ok" in lines[0]
    assert "rank 1/2" in lines[1] and "(node1)" in lines[1] and "all_reduce 1 ok" in lines[1]


def _metrics(ws: Path, run: str) -> list[dict]:
    path = ws / "results" / run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slurm
def test_preempted_job_checkpoints_requeues_and_finishes_the_same(cluster, ws, reference_job):
    """SIGUSR1 to the batch shell (what --signal=B:USR1@T sends), then compare with an
    uninterrupted run of the same recipe and steps."""
    iters = f"train.train_iters={ITERS}"
    assert reference_job[1]["ExitCode"] == "0:0", output(ws, reference_job[0])
    reference = _metrics(ws, "ref")

    run = ("checkpoint.save=" + str(ws / "checkpoints" / "pre"), "checkpoint.load=" + str(ws / "checkpoints" / "pre"))
    job = submit(cluster, ws, "pretrain_20b.sh", iters, *run, recipe="gpt_oss_tiny_pretrain", sbatch=ONE_CPU)
    deadline = time.time() + 300
    while len(_metrics(ws, "pre")) < 3:
        assert time.time() < deadline, output(ws, job)
        time.sleep(0.5)
    cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    # the requeued job is held ~120 s by SLURM's BeginTime: release it as soon as it is pending
    deadline = time.time() + 300
    while cluster.job(job).get("Restarts", "0") == "0" or cluster.job(job).get("JobState") not in (
        "PENDING",
        "RUNNING",
        "COMPLETED",
    ):
        assert time.time() < deadline, output(ws, job)
        time.sleep(0.5)
    # ...but only once slurmd has finished tearing down the first run: a job released while its node
    # is still COMPLETING is started with a revoked credential and fails ("non-startable batch job")
    deadline = time.time() + 120
    while any(s.startswith("comp") for s in cluster.run("sinfo", "-h", "-N", "-o", "%t").stdout.split()):
        assert time.time() < deadline, output(ws, job)
        time.sleep(0.5)
    time.sleep(3)
    cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now", check=False)
    info = cluster.wait(job, timeout=900, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    text = output(ws, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text
    assert "requeueing job" in text and "restart 1" in text
    resumed = _metrics(ws, "pre")
    assert [r["step"] for r in resumed] == list(range(1, ITERS + 1))
    assert resumed[-1]["lm loss"] == reference[-1]["lm loss"], "same final loss as the uninterrupted job"


@pytest.mark.slurm
def test_convert_roundtrip_runs_as_a_job(cluster, ws):
    """convert.sh roundtrip on a tiny random checkpoint: import, export, validate in one job."""
    from conversion.random_init import make_random_hf
    from gptoss.arch import TINY

    hf = make_random_hf(ws / "models" / "gpt-oss-tiny" / "hf", TINY, seed=3)
    work = ws / "cache" / "roundtrip"
    job = submit(cluster, ws, "convert.sh", "roundtrip", "--hf", str(hf), "--work", str(work), sbatch=ONE_CPU)
    info = cluster.wait(job, timeout=900)
    log = (ws / "logs" / f"convert-{job}" / "rank-0.log").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output(ws, job) + log
    assert (work / "hf-export" / "model.safetensors.index.json").exists() or list(
        (work / "hf-export").glob("*.safetensors")
    )
    assert log.count("PASS") >= 1 and "FAIL" not in log, log


@pytest.mark.slurm
def test_data_prep_runs_as_a_cpu_job(cluster, ws):
    """data_prep.sh on the CPU partition, workers from --cpus-per-task; the dataset reads back."""
    raw = ws / "raw" / "code.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    docs = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 3 for i in range(40)]
    raw.write_text("".join(json.dumps({"content": d, "lang": "Python"}) + "\n" for d in docs))
    out = ws / "data" / "slurm-code"
    job = submit(
        cluster,
        ws,
        "data_prep.sh",
        "pretrain",
        str(raw),
        "-o",
        str(out),
        "--licenses",
        "any",
        "--no-progress",
        sbatch=("-p", "cpu", "--cpus-per-task=2"),
    )
    info = cluster.wait(job, timeout=300)
    log = (ws / "logs" / f"data_prep-{job}" / "rank-0.log").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output(ws, job) + log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept"]["docs"] == len(docs)
    assert "2 worker(s)" in log, log


@pytest.mark.slurm
def test_data_prep_as_an_array_job(cluster, ws, tmp_path):
    """sbatch --array=0-2 slurm/data_prep.sh pretrain ...: task 1 is killed after one unit (the test
    hook: SIGKILL, as by the OOM killer or a node failure), the others finish and the dataset is not written; task 1
    resubmitted alone (--array=1 ... --tasks 3) resumes and, last, writes the dataset: the same
    documents, in the same order, as a one-node run. Then an array whose task 2 ran with other
    settings: the last step refuses in one line naming task 2."""
    from test_data_prep_array import read_all
    from tiny_data import write_code_corpus

    from data_prep import pretrain
    from data_prep.filters import FilterConfig

    raw = write_code_corpus(ws / "raw" / "array", files=6)
    ref = tmp_path / "one-node"
    pretrain.run(
        pretrain.PretrainConfig(inputs=raw, output=ref, filters=FilterConfig(licenses=[]), progress=False),
        log=lambda s: None,
    )
    out = ws / "data" / "array-code"
    args = ("data_prep.sh", "pretrain", str(Path(raw[0]).parent), "-o", str(out), "--licenses", "any", "--no-progress")
    cpu = ("-p", "cpu", "--cpus-per-task=1")

    job = submit(cluster, ws, *args, sbatch=(*cpu, "--array=0-2"), env={pretrain.ABORT_ENV: "process:1@1"})
    states = {i: cluster.wait(f"{job}_{i}", timeout=300) for i in range(3)}
    assert states[1]["JobState"] == "FAILED", output(ws, job)
    assert all(states[i]["JobState"] == "COMPLETED" for i in (0, 2)), states
    assert not (out / "manifest.json").exists()
    again = submit(cluster, ws, *args, "--tasks", "3", sbatch=(*cpu, "--array=1"))
    info = cluster.wait(f"{again}_1", timeout=300)
    assert info["JobState"] == "COMPLETED", output(ws, again)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["tasks"] == 3 and read_all(out) == read_all(ref)
    assert "resuming task 1 of 3" in "".join(p.read_text() for p in ws.glob("data_prep-*.out"))

    odd_out = ws / "data" / "array-odd"
    odd = [a if a != str(out) else str(odd_out) for a in args]
    first = submit(cluster, ws, *odd, "--tasks", "3", sbatch=(*cpu, "--array=0-1"))
    other = submit(cluster, ws, *odd, "--tasks", "3", "--max-bytes", "5000", sbatch=(*cpu, "--array=2"))
    ends = [cluster.wait(f"{first}_{i}", timeout=300) for i in (0, 1)] + [cluster.wait(f"{other}_2", timeout=300)]
    failed = [e for e in ends if e["JobState"] == "FAILED"]
    assert len(failed) == 1 and not (odd_out / "manifest.json").exists(), ends
    ids = [e["JobId"] for e in ends]  # each array task's own job id names its output and log
    texts = [
        p.read_text() for i in ids for p in (ws / f"data_prep-{i}.out", ws / "logs" / f"data_prep-{i}" / "rank-0.log")
    ]
    errors = {line for t in texts for line in t.splitlines() if "ran with other inputs" in line}
    assert len(errors) == 1, errors  # one line (in the job's .out and its log), no traceback
    (line,) = errors
    assert "task 2 of 3" in line and "error: " in line, line
    assert not any("Traceback" in t for t in texts)


def test_data_prep_workers_follow_the_allocation(monkeypatch):
    from data_prep.__main__ import _cores

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "7")
    assert _cores() == 7
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert _cores() == len(os.sched_getaffinity(0))


@pytest.mark.slurm
def test_generate_runs_as_a_job(cluster, ws):
    """generate.sh runs `python -m inference ...`: here the shipped problems' canonical solutions,
    scored in the sandbox inside the job (namespaces work under slurmd too)."""
    job = submit(cluster, ws, "generate.sh", "eval", "code", "--canonical", sbatch=ONE_CPU)
    info = cluster.wait(job, timeout=300)
    log = (ws / "logs" / f"generate-{job}" / "rank-0.log").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output(ws, job) + log
    assert "pass@1" in log and "1.000" in log, log
