"""The one training entry point: `python -m recipes run RECIPE [key=value ...]`.

Builds the recipe, applies overrides, checks data and layout before anything heavy starts (the
planner, the dataset files and their tokenizer), then hands the config to megatron-bridge's own
`pretrain` or `finetune` with the GPT forward step. On a machine without a GPU the same call runs
inside `megatron_cpu.training.cpu_training()` (inert when CUDA is present).

Around the bridge's loop it adds only what a long run needs:
- a checkpoint on SIGUSR1 (SLURM's pre-emption warning) and SIGTERM, then exit code 75 so the
  launcher knows to requeue; restarts resume from `checkpoint.load` (the run's own directory);
- a local JSONL of metrics per step (loss, grad norm, lr, tokens/s, MFU estimate, memory) and a
  PNG loss/lr plot at the end, under results/<run>/;
- W&B in offline mode unless a key is configured (the sync command is printed); secrets are never
  printed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from kit.dist import is_rank0
from kit.fs import atomic_file, write_text_atomic

EXIT_OK = 0
EXIT_CONFIG = 2  # bad recipe, override, data or tokenizer
EXIT_PLAN = 3  # the layout does not fit the allocation
EXIT_PREEMPTED = 75  # stopped on a signal after checkpointing: requeue and resume (EX_TEMPFAIL)


class RunError(RuntimeError):
    """A problem found before training starts; the message names the value and the fix."""


# ---------------------------------------------------------------------------------------------
# Pre-flight checks
# ---------------------------------------------------------------------------------------------


def allocation() -> tuple[int, int]:
    """(nodes, gpus per node) of this launch, from torchrun/srun's environment."""
    world = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    nodes = int(
        os.environ.get("NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1
    )
    nodes = max(1, min(nodes, world))
    return nodes, max(1, world // nodes)


def check_data(cfg: Any) -> None:
    """Every indexed dataset the recipe reads exists and was tokenized with this kit's tokenizer."""
    from gptoss.tokenizer import check_fingerprint

    blend = getattr(cfg.dataset, "blend", None)
    if blend is not None:
        # a default prefix (data/the-stack/text_document) of a dataset written as shards: the shards
        from kit.workspace import expand_sharded

        weights = blend[1] or [1.0] * len(blend[0])
        entries = [e for prefix, w in zip(blend[0], weights) for e in expand_sharded(prefix, w)]
        if len(entries) != len(blend[0]):
            cfg.dataset.blend = ([p for p, _ in entries], [w for _, w in entries])
        prefixes = cfg.dataset.blend[0]
        from recipes.alm import check_targets, uses_teacher_targets

        if uses_teacher_targets(cfg):
            for line in check_targets(prefixes):
                if is_rank0():
                    print(f"teacher targets: {line}", file=sys.stderr)
        for prefix in prefixes:
            missing = [s for s in (".bin", ".idx") if not Path(prefix + s).exists()]
            if missing:
                raise RunError(
                    f"dataset {prefix} is missing {' and '.join(missing)}: prepare it with "
                    f"`python -m data_prep pretrain INPUTS --out {prefix}` or point dataset.blend elsewhere"
                )
            _check_split(cfg, prefix)
            manifest = Path(prefix).parent / "manifest.json"
            if manifest.exists():
                meta = json.loads(manifest.read_text())
                found = meta.get("tokenizer")  # written by data_prep (data_prep/pretrain.py)
                check_fingerprint(found, f"dataset {prefix} ({manifest})")
    root = getattr(cfg.dataset, "dataset_root", None)
    if root is not None and not Path(root).exists():
        raise RunError(f"SFT data {root} does not exist: prepare it with `python -m data_prep sft ... --out {root}`")
    specs = getattr(cfg.dataset, "packed_sequence_specs", None) or getattr(cfg.dataset, "offline_packing_specs", None)
    if root is not None and specs is not None:
        _check_packs(cfg, specs)


def _check_packs(cfg: Any, specs: Any) -> None:
    """Each packed split must hold one global batch (the bridge drops partial batches and asserts
    only when it reaches that split: for validation, after the whole training run)."""
    import pyarrow.parquet as pq

    gbs = cfg.train.global_batch_size
    splits = [("training", specs.packed_train_data_path, True), ("validation", specs.packed_val_data_path, False)]
    for name, path, required in splits:
        if path is None or not Path(path).exists():
            if required:
                raise RunError(f"packed {name} data {path} is missing: run `python -m data_prep sft ...` for this seq_length")
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        if name == "validation" and cfg.validation.eval_iters == 0:
            continue
        if rows < gbs:
            raise RunError(
                f"{path} holds {rows} pack(s), fewer than one global batch ({gbs}): give data_prep sft more "
                f"{name} conversations (--val-fraction / --val-inputs) or lower train.global_batch_size"
            )
    # With pad_seq_to_mult > 1 (context parallelism) the bridge reads every sequence's span as padded to
    # that multiple; data_prep sft --pad-to-multiple records its multiple in the packing metadata
    # (absent: 1, unpadded). A multiple of the recipe's is as good (every span then divides by it too).
    need = specs.pad_seq_to_mult or 1
    meta_path = specs.packed_metadata_path
    meta = json.loads(Path(meta_path).read_text()) if meta_path and Path(meta_path).exists() else []
    have = min((int(m.get("pad_seq_to_mult", 1)) for m in meta), default=1)
    if have % need:
        raise RunError(
            f"{specs.packed_train_data_path} was packed with --pad-to-multiple {have}, but this recipe reads sequences "
            f"padded to a multiple of {need} (pad_seq_to_mult = 2 * context parallel size): re-run "
            f"`python -m data_prep sft ... --seq-length {specs.packed_sequence_size} --pad-to-multiple {need}`"
        )


def _check_split(cfg: Any, prefix: str) -> None:
    """Megatron loops forever building the indices of a split that received no document: refuse."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from inference.loss import SPLIT_NAMES, document_range  # megatron-core's own split arithmetic

    docs = len(IndexedDataset(prefix, mmap=True).document_indices) - 1
    weights = [float(w) for w in str(cfg.dataset.split).replace("/", ",").split(",")]
    for name, w in zip(SPLIT_NAMES, weights):
        lo, hi = document_range(docs, str(cfg.dataset.split), name)
        if w > 0 and hi - lo == 0:
            raise RunError(
                f"dataset.split={cfg.dataset.split} gives the {name} split 0 of the {docs} documents in {prefix}: "
                f"use a coarser split such as dataset.split=90,5,5 or more data"
            )


def check_pretrained(cfg: Any) -> None:
    path = cfg.checkpoint.pretrained_checkpoint
    from conversion.megatron_dir import has_checkpoint

    resuming = cfg.checkpoint.load and has_checkpoint(cfg.checkpoint.load)
    if path and not resuming and not Path(path).exists():
        raise RunError(
            f"pretrained checkpoint {path} does not exist: import the HF weights with "
            f"`python -m conversion import --hf HF_DIR --out {path}` or set checkpoint.pretrained_checkpoint"
        )
    from recipes.distill import teacher_checkpoint

    teacher = teacher_checkpoint(cfg)  # read on every start, resumed or not: the teacher is never saved
    if teacher is not None and not has_checkpoint(teacher):
        raise RunError(
            f"teacher checkpoint {teacher} holds no Megatron checkpoint: import the teacher's HF weights with "
            f"`python -m conversion import --hf HF_DIR --out {teacher}`, or point model.teacher.pretrained_checkpoint "
            f"at a training run's checkpoint directory"
        )
    if teacher is not None:
        _check_teacher_arch(cfg, teacher)


def _check_teacher_arch(cfg: Any, teacher: str) -> None:
    """The teacher checkpoint holds the architecture the recipe builds the teacher with (its sidecar,
    written by import and by training runs); otherwise loading would fail only after start-up."""
    from conversion.megatron_io import ConversionError, read_sidecar
    from gptoss.arch import GptOssArch, arch_from_hf_config

    try:
        config, _ = read_sidecar(teacher)
    except ConversionError:
        return  # a checkpoint without the kit's sidecar: the loader is the judge
    got, want = arch_from_hf_config(config), GptOssArch.from_provider(cfg.model.teacher)
    fields = ("num_layers", "hidden_size", "num_experts", "expert_ffn_hidden_size", "num_attention_heads", "vocab_size")
    diff = [f"{f} {getattr(got, f)} (recipe: {getattr(want, f)})" for f in fields if getattr(got, f) != getattr(want, f)]
    if diff:
        raise RunError(
            f"teacher checkpoint {teacher} is not the recipe's teacher: {', '.join(diff)}: point "
            f"model.teacher.pretrained_checkpoint at a gpt-oss-{want.name} checkpoint, or use the recipe made for that teacher"
        )


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def mfu_peak() -> tuple[str, float] | None:
    """(GPU name, dense bf16 peak FLOP/s) of the GPU this process trains on, from the planner's
    table; None without a GPU or for one the table does not know (no MFU rather than a wrong one)."""
    from megatron_cpu.training import cuda_available
    from recipes.planner import GPUS, gpu_from_device_name

    if not cuda_available():
        return None
    import torch

    key = gpu_from_device_name(torch.cuda.get_device_name())
    return (GPUS[key].name, GPUS[key].bf16_tflops * 1e12) if key else None


def _metrics_callback(path: Path, tokens_per_step: int, flops_per_token: float, peak: tuple[str, float] | None):
    from megatron.bridge.training.callbacks import Callback

    class MetricsLog(Callback):
        """One JSON line per step; on resume, lines at or past the resumed step are dropped first so
        the file is always one consistent curve."""

        def on_train_start(self, context) -> None:
            step = context.state.train_state.step
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
                path.write_text("".join(ln + "\n" for ln in kept))
            self.last = time.perf_counter()

        def on_train_step_end(self, context) -> None:
            import torch

            now = time.perf_counter()
            dt, self.last = now - self.last, now
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            tps = tokens_per_step / dt if dt > 0 else None
            rec = {
                "step": context.state.train_state.step + 1,  # fired before the bridge counts the step
                "time": time.time(),
                **{k: float(v) for k, v in (context.loss_dict or {}).items()},
                "grad_norm": None if context.grad_norm is None else float(context.grad_norm),
                "lr": context.optimizer.param_groups[0]["lr"] if context.optimizer else None,
                "step_time_s": dt,
                "tokens_per_s": tps,
                "tokens_per_s_per_gpu": tps / world if tps else None,
                "mfu": (tps / world * flops_per_token / peak[1]) if (tps and peak) else None,
                "mfu_peak": None if peak is None else {"gpu": peak[0], "bf16_tflops": peak[1] / 1e12},
                "memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            }
            if is_rank0():
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")

        def on_train_end(self, context) -> None:
            if is_rank0():
                plot_metrics(path)

    return MetricsLog()


def plot_metrics(path: Path) -> Path | None:
    """loss and lr against step, next to the JSONL."""
    if not path.exists():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss_key = next((k for k in ("lm loss", "loss") if k in rows[0]), None)
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss_key:
        ax.plot(steps, [r[loss_key] for r in rows], color="tab:blue")
        ax.set_ylabel(loss_key, color="tab:blue")
    ax.set_xlabel("step")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange")
    ax2.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    out = path.with_suffix(".png")
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def wandb_run_id(checkpoint_dir: str | os.PathLike) -> str:
    """One training run = one W&B run, however often it is requeued: the id is derived from the run's
    checkpoint directory (what a resume reads), as <dir name>-<12 hex of sha256 of its absolute path>
    (W&B ids: letters, digits, - and _; at most 64 characters)."""
    import hashlib
    import re

    path = Path(checkpoint_dir).absolute()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', path.name)[:48]}-{digest}"


def _configure_wandb(cfg: Any, results: Path) -> None:
    if not getattr(cfg.logger, "wandb_project", None):
        return
    if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "online":
        os.environ["WANDB_MODE"] = "offline"
    cfg.logger.wandb_save_dir = cfg.logger.wandb_save_dir or str(results / "wandb")
    if not cfg.logger.wandb_exp_name:
        cfg.logger.wandb_exp_name = results.name
    # The bridge calls wandb.init() without an id; wandb reads these (a user's own WANDB_RUN_ID wins).
    run_id = os.environ.setdefault("WANDB_RUN_ID", wandb_run_id(cfg.checkpoint.save or results))
    os.environ.setdefault("WANDB_RESUME", "allow")
    if is_rank0():
        write_text_atomic(results / "wandb_run_id", run_id + "\n")
    if os.environ.get("WANDB_MODE") == "offline":
        print(f"W&B offline, run id {run_id}: sync later with `wandb sync {cfg.logger.wandb_save_dir}/wandb/offline-run-*-{run_id}`")


def _forward_signal_to_usr1(signum, frame) -> None:
    """First SIGTERM: checkpoint and stop like SIGUSR1 (the bridge's handler). A second one kills."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGUSR1)


def prepare(recipe: str, overrides: list[str]) -> Any:
    """Build and check: raises RunError/ValueError/KeyError with a message naming the fix."""
    import recipes

    cfg = recipes.build(recipe, overrides)
    check_data(cfg)
    check_pretrained(cfg)
    return cfg


def train(cfg: Any, recipe: str, extra_callbacks: list | None = None) -> int:
    """Plan against this launch's allocation, then run megatron-bridge's loop. Returns the exit code."""
    from gptoss.arch import GptOssArch
    from kit import workspace
    from recipes.planner import plan

    nodes, gpus = allocation()
    p = plan(cfg, recipe=recipe, nodes=nodes, gpus_per_node=gpus)
    if not p.ok:
        print(p.render(), file=sys.stderr)
        return EXIT_PLAN

    run_name = Path(cfg.checkpoint.save).name if cfg.checkpoint.save else recipe
    results = workspace.results_dir(run_name)
    _configure_wandb(cfg, results)
    cfg.train.exit_signal_handler = True
    cfg.train.exit_signal = signal.SIGUSR1
    signal.signal(signal.SIGTERM, _forward_signal_to_usr1)

    seq = cfg.dataset.seq_length
    metrics = results / "metrics.jsonl"
    callback = _metrics_callback(
        metrics, cfg.train.global_batch_size * seq, GptOssArch.from_provider(cfg.model).train_flops_per_token(seq), mfu_peak()
    )

    from megatron.bridge.training.finetune import finetune
    from megatron.bridge.training.gpt_step import forward_step, forward_step_modelopt
    from megatron.bridge.training.pretrain import pretrain

    from megatron_cpu.training import cpu_training

    # finetune() is pretrain() that insists on starting from weights: continued pretraining, SFT, LoRA.
    # Distillation's step adds the KD loss (megatron.bridge.training.distill.distill() is pretrain()
    # with this step; finetune() with it also loads the student's starting weights).
    from recipes import alm
    from recipes.distill import is_distillation

    entry = finetune if cfg.checkpoint.pretrained_checkpoint else pretrain
    step = forward_step_modelopt if is_distillation(cfg) else forward_step
    if alm.uses_teacher_targets(cfg):  # a teacher of another tokenizer, through its targets
        alm.register_dataset()
        step = alm.forward_step
    with cpu_training():
        try:
            entry(cfg, step, callbacks=[callback, *(extra_callbacks or [])])
        except SystemExit as stop:  # the bridge exits by itself at train.exit_interval/duration
            if stop.code not in (0, None):
                raise
    if cfg.checkpoint.save and cfg.peft is None and is_rank0():
        # the run's checkpoints become exportable with `python -m conversion export --megatron <dir>`
        from conversion.megatron_dir import has_checkpoint
        from conversion.megatron_io import write_training_sidecar

        if has_checkpoint(cfg.checkpoint.save):
            write_training_sidecar(cfg.checkpoint.save, GptOssArch.from_provider(cfg.model), source=f"recipe {recipe}")
            from recipes.qat import is_qat

            if is_qat(cfg):  # its MXFP4 export is what it trained (conversion validate checks)
                from conversion.mxfp4 import mark_qat_run

                mark_qat_run(cfg.checkpoint.save)
    done = _last_step(metrics)
    if done is not None and done < cfg.train.train_iters:
        print(f"stopped at step {done} of {cfg.train.train_iters}; checkpoint saved: rerun the same command to resume")
        return EXIT_PREEMPTED
    return EXIT_OK


def run(recipe: str, overrides: list[str]) -> int:
    """Train RECIPE with overrides; returns the process exit code."""
    try:
        cfg = prepare(recipe, overrides)
    except (KeyError, ValueError, RunError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return EXIT_CONFIG
    return train(cfg, recipe)


def _last_step(path: Path) -> int | None:
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else None
