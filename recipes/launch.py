"""`python -m recipes launch RECIPE [key=value ...] --executor slurm|local`: the training job through
NeMo-Run, for those who manage their jobs with it (`nemo experiment list/status/logs`).

It runs the planner first and submits nothing when the layout does not fit (exit 3). Then:

- slurm: a NeMo-Run SlurmExecutor submits from this machine (a LocalTunnel: run it on a login
  node, from the kit's checkout) one sbatch job with one task per GPU, each running
  `python -m recipes run RECIPE key=value ...`, the command of the kit's sbatch scripts.
  `--dry-run` prints the sbatch script and submits nothing.
- local: a NeMo-Run LocalExecutor runs the same command under torchrun on this machine and waits.

One source of truth: the sbatch script NeMo-Run renders sources slurm/lib.sh and calls the same
functions as the kit's own scripts (kit_init: environment, caches and log directory under
$WORKSPACE; kit_container_args: the pinned image of slurm/defaults.env and its mounts;
kit_rendezvous: MASTER_ADDR/MASTER_PORT of the allocation), then NeMo-Run's srun line launches the
tasks with those flags and the per-task prefix of kit_launch. Only that one-line prefix is restated
here (TASK_ENV); tests/test_launch.py runs both sbatch scripts with a stand-in srun and compares the
two srun lines word for word, so the scripts and this launcher cannot drift apart unnoticed.

What differs from the scripts is NeMo-Run's own job handling: its sbatch output file and job
directory under $NEMORUN_HOME (default ~/.nemo_run, which must be on a filesystem the nodes
share), the pre-emption signal sent to the tasks themselves (`--signal=USR1@300`: they checkpoint
and exit 75), and NeMo-Run's requeue policy: any non-zero exit is requeued up to `--retries` times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

KIT_DIR = Path(__file__).resolve().parents[1]
DEFAULTS_ENV = KIT_DIR / "slurm" / "defaults.env"
# Each task's environment, as slurm/lib.sh's kit_launch sets it (the tests check it is the same text)
TASK_ENV = (
    'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; '
    'if [ "$RANK" = 0 ]; then python -m kit.versions --check || exit $?; fi; exec "$@"'
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value (dotted config paths), passed to every task")
    p.add_argument("--executor", choices=["slurm", "local"], default="slurm", help="default: slurm")
    p.add_argument("--nodes", type=int, help="default: the recipe's")
    p.add_argument("--gpus-per-node", type=int, help="default: the recipe's")
    p.add_argument("--account", help="slurm: sbatch --account")
    p.add_argument("--partition", help="slurm: sbatch --partition")
    p.add_argument("--time", default="48:00:00", help="slurm: time limit (default 48:00:00, as the scripts)")
    p.add_argument(
        "--container-image",
        help="slurm: pyxis image, or 'none' for the venv $KIT_VENV (default: $CONTAINER_IMAGE or slurm/defaults.env)",
    )
    p.add_argument(
        "--retries", type=int, default=10, help="slurm: requeues after a pre-emption or failure (default 10)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script (slurm), run nothing")


def default_container_image() -> str:
    """$CONTAINER_IMAGE, else DEFAULT_CONTAINER_IMAGE of slurm/defaults.env (read by bash, as lib.sh does)."""
    if os.environ.get("CONTAINER_IMAGE"):
        return os.environ["CONTAINER_IMAGE"]
    out = subprocess.run(
        ["bash", "-c", 'source "$1" && printf %s "$DEFAULT_CONTAINER_IMAGE"', "defaults", str(DEFAULTS_ENV)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def workspace() -> str:
    """$WORKSPACE, with the one default (kit.workspace.DEFAULT_ROOT, as slurm/lib.sh has it)."""
    from kit.workspace import root

    return str(root())


def kit_env(ws: str, gpus_per_node: int) -> dict[str, str]:
    """What slurm/lib.sh's kit_init exports (caches under $WORKSPACE, NCCL/CUDA settings), taken
    from the library itself: the local executor runs in the scripts' environment."""
    env = {**os.environ, "KIT_DIR": str(KIT_DIR), "WORKSPACE": ws, "GPUS_PER_NODE": str(gpus_per_node)}
    out = subprocess.run(
        ["bash", "-c", "source slurm/lib.sh && kit_init >/dev/null && env -0"],
        cwd=KIT_DIR,
        env=env,
        capture_output=True,
        check=True,
    )
    after = dict(kv.split("=", 1) for kv in out.stdout.decode().split("\0") if "=" in kv)
    bash_own = {"PWD", "OLDPWD", "SHLVL", "_"}
    return {k: v for k, v in after.items() if k not in bash_own and env.get(k) != v} | {"WORKSPACE": ws}


def plan_exit_code(recipe: str, overrides: list[str], nodes: int, gpus_per_node: int) -> int:
    """The planner on this allocation, its report on stderr: 0, or 3 when the layout does not fit."""
    import recipes
    from recipes.planner import plan

    with contextlib.redirect_stdout(sys.stderr):
        p = plan(recipes.build(recipe, overrides), recipe=recipe, nodes=nodes, gpus_per_node=gpus_per_node)
    print(p.render(), file=sys.stderr)
    return 0 if p.ok else 3


# ---------------------------------------------------------------------------------------------
# slurm
# ---------------------------------------------------------------------------------------------

# In the batch shell, before NeMo-Run's srun line: the kit's library does everything but the srun.
# kit_plan is left out: the launcher planned this very allocation before submitting it.
SETUP_LINES = """\
set +vx  # quiet while the library runs; the srun line below is traced
# slurm/lib.sh, as in the kit's sbatch scripts: environment and caches under $WORKSPACE, the log
# directory, the container flags (KIT_CONTAINER_ARGS) and MASTER_ADDR/MASTER_PORT of this allocation
source "$KIT_DIR/slurm/lib.sh"
kit_init
kit_container_args
kit_rendezvous
set +eu +o pipefail  # back to NeMo-Run's template, which collects the exit code and requeues
set -x"""


def task_command(recipe: str, overrides: list[str], container_image: str) -> list[str]:
    """Each task's command line as slurm/lib.sh's kit_launch builds it, as words of shell text
    (expanded by the batch shell: $KIT_VENV is lib.sh's)."""
    if container_image == "none":
        prefix = ["bash", "-c", "\"source '$KIT_VENV/bin/activate'; \"" + shlex.quote(TASK_ENV), "kit"]
    else:
        prefix = ["bash", "-c", shlex.quote(TASK_ENV), "kit"]
    return [*prefix, "python", "-m", "recipes", "run", *map(shlex.quote, [recipe, *overrides])]


def __getattr__(name: str) -> Any:
    """recipes.launch.KitJobDetails, made on first use: NeMo-Run takes 15 s to import, and
    `python -m recipes` imports this module for its options. (NeMo-Run saves the executor with a
    reference to this class and imports it again for `nemo experiment status/logs`.)"""
    if name != "KitJobDetails":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from dataclasses import dataclass

    from nemo_run.core.execution.slurm import SlurmJobDetails

    @dataclass(kw_only=True)
    class KitJobDetails(SlurmJobDetails):
        """srun's output where the scripts put it, one file per rank: $WORKSPACE/logs/<job>-<jobid>/
        rank-N.log ($JOB_LOG_DIR, made by kit_init); `nemo experiment logs` shows rank 0's."""

        workspace: str = ""

        @property
        def srun_stdout(self) -> Path:
            return Path('"$JOB_LOG_DIR"/rank-%t.log')

        @property
        def ls_term(self) -> str:
            return os.path.join(self.workspace, "logs", "*-%j", "rank-0.log")

    KitJobDetails.__qualname__ = name
    globals()[name] = KitJobDetails
    return KitJobDetails


def slurm_executor(args: argparse.Namespace, nodes: int, gpus: int, container_image: str, ws: str) -> Any:
    import nemo_run as run

    return run.SlurmExecutor(
        account=args.account,
        partition=args.partition,
        time=args.time,
        nodes=nodes,
        ntasks_per_node=gpus,
        gpus_per_node=gpus,
        exclusive=True,
        signal="USR1@300",  # to the tasks: they checkpoint and exit 75, and NeMo-Run requeues
        retries=args.retries,
        job_name_prefix="gptoss-kit.",
        # NeMo-Run would add its own container flags: lib.sh's are passed below instead
        container_image=None,
        # the kit runs from its checkout, as the scripts do (no code snapshot to package)
        packager=run.Packager(),
        tunnel=run.LocalTunnel(job_dir=""),
        job_details=__getattr__("KitJobDetails")(workspace=ws),
        env_vars={
            "KIT_DIR": shlex.quote(str(KIT_DIR)),
            "WORKSPACE": shlex.quote(ws),
            "CONTAINER_IMAGE": shlex.quote(container_image),
        },
        setup_lines=SETUP_LINES,
        srun_args=[
            f"--ntasks-per-node={gpus}",
            # NeMo-Run sends the tasks to its job directory (--chdir .../code): the last --chdir wins
            '--chdir="$KIT_DIR"',
            '"${KIT_CONTAINER_ARGS[@]}"',
        ],
    )


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def launch(args: argparse.Namespace) -> int:
    import recipes

    try:
        recipe = recipes.get(args.recipe)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    nodes = args.nodes or recipe.nodes
    gpus = args.gpus_per_node or recipe.gpus_per_node
    if args.executor == "local" and nodes != 1:
        print(f"error: the local executor runs on this machine: --nodes 1, not {nodes}", file=sys.stderr)
        return 2
    try:
        rc = plan_exit_code(args.recipe, args.overrides, nodes, gpus)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if rc != 0:
        print(
            f"error: recipe {args.recipe} does not fit {nodes}x{gpus} GPUs (planner exit {rc}); nothing was submitted",
            file=sys.stderr,
        )
        return rc

    import nemo_run as run

    ws = workspace()
    if args.executor == "local":
        executor = run.LocalExecutor(
            ntasks_per_node=gpus,
            launcher=run.Torchrun(),  # one node: torchrun picks a free rendezvous port itself
            # torchrun from this interpreter's environment, in the scripts' environment
            env_vars=kit_env(ws, gpus) | {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"},
        )
        task = run.Script(path="recipes", m=True, entrypoint="python", args=["run", args.recipe, *args.overrides])
    else:
        image = args.container_image or default_container_image()
        # NeMo-Run replaces each "/nemo_run" in the script it renders without a container image
        # (its job directory's name inside containers): a path holding it would be rewritten
        homes = {"KIT_DIR": str(KIT_DIR), "WORKSPACE": ws, "NEMORUN_HOME": run.config.get_nemorun_home()}
        for var, path in homes.items():
            if "/nemo_run" in path:
                print(f"error: {var}={path} contains '/nemo_run', which NeMo-Run rewrites: move it", file=sys.stderr)
                return 2
        executor = slurm_executor(args, nodes, gpus, image, ws)
        # NeMo-Run joins a script's words with spaces, unquoted: task_command quotes them once
        words = task_command(args.recipe, args.overrides, image)
        task = run.Script(entrypoint=words[0], path=words[1], args=words[2:])

    # NeMo-Run's console goes to stdout: keep stdout for the sbatch script of --dry-run
    with contextlib.redirect_stdout(sys.stderr), run.Experiment(args.recipe, executor=executor) as exp:
        exp.add(task, name=args.recipe)
        if args.dry_run:
            exp.dryrun(log=args.executor == "local", delete_exp_dir=False)
        else:  # slurm: submit and return; local: wait, with the logs on the console
            exp.run(detach=args.executor == "slurm", tail_logs=args.executor == "local")
    job = exp.jobs[0]
    if args.dry_run:
        exp_dir = job.executor.experiment_dir
        if args.executor == "slurm":
            (script,) = Path(exp_dir).glob("*_sbatch.sh")
            print(script.read_text())
        shutil.rmtree(exp_dir)
        return 0
    if args.executor == "slurm":
        job_id = job.handle.rpartition("/")[2]
        print(f"submitted job {job_id}; rank logs in {ws}/logs/{executor.job_name_prefix}{args.recipe}-{job_id}/")
        return 0
    # local: torchrun reports a failed worker as 1 whatever its exit code; the log above says why
    return 0 if job.state.name == "SUCCEEDED" else 1
