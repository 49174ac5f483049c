"""A real one-machine SLURM cluster for tests: munged + slurmctld + one slurmd per node.

Debian's own packages (slurmctld, slurmd, slurm-client, munge; installed by
scripts/setup_test_tools.sh, which `make test` runs). Two nodes on 127.0.0.1 with distinct ports, each with fake GPUs
(character devices aliasing /dev/null) so that --gpus-per-node is accepted and CUDA_VISIBLE_DEVICES
is set per job, as on a real GPU cluster. No systemd, no cgroups, no accounting: see
../shared/notes/local-slurm.md for why each config key is there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

_LAUNCHER_VARS = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}


class SlurmUnavailable(RuntimeError):
    pass


def ensure_installed() -> None:
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(b)]
    if missing:
        raise SlurmUnavailable(f"{', '.join(missing)} not installed: run `bash scripts/setup_test_tools.sh` as root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid_file: Path) -> bool:
    """A pid file can point at a zombie (PID 1 reaps late): read the process state, not kill -0."""
    try:
        pid = int(pid_file.read_text().strip())
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, ValueError):
        return False
    return state not in ("Z", "X")


class Cluster:
    def __init__(self, root: Path, nodes: int = 2, gpus_per_node: int = 2, cpus_per_node: int = 4):
        self.root = root
        self.nodes = [f"node{i}" for i in range(nodes)]
        self.gpus_per_node = gpus_per_node
        self.cpus_per_node = cpus_per_node
        self.conf = root / "slurm.conf"
        # sbatch exports the submitter's environment: leave out what a test process may have set
        # for its own torch.distributed (the job scripts must not depend on it either way)
        inherited = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
        self.env = {**inherited, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    # ---- set-up --------------------------------------------------------------------------
    def write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "gpus", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        ctld_port = _free_port()
        lines = [
            "ClusterName=kit",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={r}/log/jobcomp.txt",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "EnforcePartLimits=ALL",
            "ReturnToService=2",
            "GresTypes=gpu",
            "SchedulerParameters=sched_interval=1",
            "MinJobAge=600",
            "KillWait=5",
            "InactiveLimit=0",
            "JobRequeue=1",
        ]
        gres = []
        for n in self.nodes:
            port = _free_port()
            lines.append(
                f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={host} Port={port} CPUs={self.cpus_per_node} "
                f"RealMemory=8000 Gres=gpu:{self.gpus_per_node} State=UNKNOWN"
            )
            files = []
            for g in range(self.gpus_per_node):
                f = r / "gpus" / f"{n}-gpu{g}"
                if not f.exists():
                    os.mknod(f, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
                files.append(str(f))
            gres.append(f"NodeName={n} Name=gpu File={','.join(files)}")
        lines.append(f"PartitionName=gpu Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        lines.append(f"PartitionName=cpu Nodes={','.join(self.nodes)} Default=NO MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        (r / "gres.conf").write_text("\n".join(gres) + "\n")

    def start(self) -> None:
        ensure_installed()
        self.write_config()
        r = self.root
        munge_sock = Path("/run/munge")
        munge_sock.mkdir(parents=True, exist_ok=True)
        shutil.chown(munge_sock, "munge", "munge")
        if not _alive(Path("/run/munge/munged.pid")):
            subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged --force"], check=True)
        # never start a second daemon over a running one: it would kill the first through its pid file
        self.procs.append(
            subprocess.Popen(
                ["slurmctld", "-D", "-c", "-f", str(self.conf)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for n in self.nodes:
            (r / "spool" / n).mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    ["slurmd", "-D", "-N", n, "-f", str(self.conf)],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            if len(states) == len(self.nodes) and all(s.startswith("idle") for s in states.values()):
                return
            time.sleep(0.5)
        logs = "\n".join(p.read_text()[-2000:] for p in (r / "log").glob("*.log"))
        self.stop()
        raise SlurmUnavailable(f"cluster did not come up: {out.stdout} {out.stderr}\n{logs}")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()

    # ---- use -----------------------------------------------------------------------------
    def run(self, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env={**self.env, **(env or {})}, capture_output=True, text=True, check=check)

    def sbatch(self, *args: str, env: dict | None = None) -> int:
        out = self.run("sbatch", "--parsable", *args, env=env)
        return int(out.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields = {}
        for tok in out.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                fields[k] = v
        return fields

    def wait(
        self,
        job_id: int,
        timeout: float = 300,
        until: tuple[str, ...] = (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "PREEMPTED",
        ),
    ) -> dict[str, str]:
        """Poll scontrol (sbatch --wait polls too coarsely) until the job reaches one of `until`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in until:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout}s")
