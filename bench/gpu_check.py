"""The prepared GPU check: what only a GPU can show, through the kit's own entry points, in one run.

    python bench/gpu_check.py [--layers 4] [--out bench/]     # on one H100/H200: under 10 minutes
    python bench/gpu_check.py --tiny --out /tmp/check         # the same steps on CPU, tiny model

Steps (each prints its figures; a GPU-only part says "skipped: no GPU" with the reason on CPU):
1. training throughput and memory: a gpt-oss-20b truncated to --layers layers (all widths, the 32
   experts, the real 201,088 vocabulary; EP=TP=PP=1, bf16, seq 4096; Transformer Engine with grouped
   GEMM where installed, else megatron-core's local layers: bench/device_check.sh on a bare host)
   trained for a few steps by `python -m recipes run gpt_oss_20b_pretrain` with overrides, on data made
   by `python -m data_prep pretrain`: tokens/s, MFU (FLOPs of that truncated model), peak memory, and
   the planner's estimate for exactly that config (the ratio is the planner's error).
2. numerics at full width: random HF weights of the same truncated model (MXFP4 experts, as the
   release) through the streamed import, then `conversion validate` with logits (Megatron-Bridge's bar:
   cosine >= 0.99, same top-1).
3. checkpoints both ways: the training run's checkpoint (step 1, written by the recipes' model)
   exported to HF bf16 and MXFP4 and validated against it.
4. attention with sinks: which attention backend Transformer Engine picks, and the cuDNN version.

Writes <out>/gpu_check_<gpu>.md with the command, versions and date. `--tiny` is part of the test
suite (tests/test_gpu_check.py), so the script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(cmd: list[str], log: Path, env: dict) -> float:
    """Run a kit command as a user would; its output to `log`; wall seconds; SystemExit on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if rc:
        raise SystemExit(f"{' '.join(cmd[1:4])} ... failed ({rc}); last lines of {log}:\n" + "".join(open(log).readlines()[-20:]))
    return time.perf_counter() - t0


def _corpus(path: Path, tokens: int) -> None:
    """Code-like JSONL of about `tokens` o200k tokens (seeded): enough for the steps to train."""
    rng = random.Random(0)
    words = ["def", "return", "for", "in", "range", "if", "else", "x", "y", "total", "items", "value", "(", ")", ":", "+", "=", "1", "0"]
    with open(path, "w") as f:
        for i in range(max(tokens // 400, 20)):
            body = "\n".join("    " + " ".join(rng.choice(words) for _ in range(12)) for _ in range(30))
            f.write(json.dumps({"content": f"def f{i}(x):\n{body}\n", "lang": "Python"}) + "\n")


def check(args: argparse.Namespace) -> list[str]:
    import torch

    from gptoss.arch import GPT_OSS_20B, TINY
    from kit.versions import cuda_versions, installed
    from megatron_cpu.compat import te_available
    from megatron_cpu.training import cuda_available

    gpu = cuda_available()
    if not gpu and not args.tiny:
        raise SystemExit("error: no GPU here; run with --tiny for the CPU version of the check")
    device = torch.cuda.get_device_name() if gpu else "cpu"
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WORKSPACE": str(work / "workspace"), "PYTHONUNBUFFERED": "1"}
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(29000 + os.getpid() % 1000))
    py = sys.executable
    arch = TINY if args.tiny else replace(GPT_OSS_20B, name=f"20b-{args.layers}l", num_layers=args.layers)
    recipe = "gpt_oss_tiny_pretrain" if args.tiny else "gpt_oss_20b_pretrain"
    seq, gbs, iters = (128, 2, 3) if args.tiny else (4096, 8, 10)
    lines = [
        f"# GPU check on {device}",
        "",
        f"`{' '.join(['python', 'bench/gpu_check.py', *sys.argv[1:]])}`, {datetime.date.today().isoformat()}",
        "",
        "versions: " + ", ".join(f"{k} {v or '(none)'}" for k, v in {**installed(), **cuda_versions()}.items()),
        "",
    ]

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    # ---- 1. training throughput and memory, against the planner ---------------------------------
    layers = "Transformer Engine" if te_available() else "megatron-core's local layers (no Transformer Engine)"
    say(f"## 1. training: {recipe}, {arch.num_layers} layers, seq {seq}, global batch {gbs}, {iters} steps, {layers}")
    _corpus(work / "code.jsonl", tokens=gbs * seq * (iters + 4) * 2)
    data = work / "workspace" / "data" / "check"
    _run([py, "-m", "data_prep", "pretrain", str(work / "code.jsonl"), "-o", str(data), "--overwrite"], work / "data_prep.log", env)
    ckpt = work / "workspace" / "checkpoints" / "check"
    overrides = [
        f"train.train_iters={iters}", f"train.global_batch_size={gbs}", "train.micro_batch_size=1",
        f"dataset.blend=[[\"{data / 'text_document'}\"],[1.0]]", "dataset.split=90,5,5",
        f"checkpoint.save={ckpt}", f"checkpoint.load={ckpt}", f"checkpoint.save_interval={iters}",
    ]  # fmt: skip
    if not args.tiny:
        overrides += [
            f"model.num_layers={arch.num_layers}", "model.tensor_model_parallel_size=1", "model.pipeline_model_parallel_size=1",
            "model.expert_model_parallel_size=1", "model.sequence_parallel=false", f"dataset.seq_length={seq}", f"model.seq_length={seq}",
        ]  # fmt: skip
    wall = _run([py, "-m", "recipes", "run", recipe, *overrides], work / "train.log", env)
    rows = [json.loads(x) for x in (work / "workspace" / "results" / "check" / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows  # step 1 pays compilation and allocation
    tps = sum(r["tokens_per_s_per_gpu"] for r in steady) / len(steady)
    peak = max(r["memory_gib"] for r in rows)
    import recipes
    from recipes.planner import plan

    estimate = plan(recipes.build(recipe, overrides), recipe=recipe, nodes=1, gpus_per_node=1, gpu=args.gpu).memory_gib
    total = next(v for k, v in estimate.items() if k.startswith("TOTAL"))
    mfu = steady[-1]["mfu"]
    say(f"- {len(rows)} steps in {wall:.0f} s; lm loss {rows[0]['lm loss']:.3f} -> {rows[-1]['lm loss']:.3f}")
    say(f"- throughput {tps:,.0f} tokens/s/GPU (steps 2..{len(rows)}); MFU " + (f"{mfu:.1%} of {steady[-1]['mfu_peak']['gpu']}" if mfu else "none (no GPU peak: CPU or a GPU the planner does not know)"))
    say(f"- peak memory {peak:.2f} GiB ({'torch.cuda.max_memory_allocated' if gpu else 'process RSS on CPU'}); planner estimate {total:.2f} GiB: measured/estimate {peak / total:.2f}" + ("" if gpu else " (CPU: not the planner's GPU model; recorded, not judged)"))

    # ---- 2. numerics at full width ----------------------------------------------------------------
    say()
    say(f"## 2. numerics: random {arch.name} weights (MXFP4 experts) -> streamed import -> logits vs transformers")
    from conversion.megatron_io import export_hf, import_hf
    from conversion.random_init import make_random_hf_streamed
    from conversion.validate import validate, validate_hf_pair

    hf = work / "hf-random"
    from kit.fs import staged_dir

    with staged_dir(hf, force=True) as tmp:  # replaces only this script's own earlier output
        make_random_hf_streamed(tmp, arch, seed=0, mxfp4_experts=True)
    meg = import_hf(hf, work / "megatron-random", force=True)
    report = validate(hf, meg)
    for line in report.text().splitlines():
        say(f"- {line}")

    # ---- 3. checkpoints both ways -----------------------------------------------------------------
    say()
    say("## 3. the training run's checkpoint -> HF bf16 and MXFP4 -> validated against it")
    bf16 = export_hf(ckpt, work / "export-bf16", dtype="bf16", force=True)
    mx = export_hf(ckpt, work / "export-mxfp4", dtype="mxfp4", force=True)
    # the bf16 export against the checkpoint; the MXFP4 one against the bf16 one, quantized by the codec
    for what, r in (("bf16 vs checkpoint", validate(bf16, ckpt, logits=False)), ("mxfp4 vs bf16", validate_hf_pair(bf16, mx))):
        text = r.text().splitlines()
        say(f"- {what}: {text[0]}; {text[-1]}")

    # ---- 4. attention with sinks under Transformer Engine --------------------------------------------
    say()
    say("## 4. attention with sinks under Transformer Engine")
    if not gpu:
        say("- skipped: no GPU (Transformer Engine's attention backends need CUDA); the CPU run used Megatron's local attention with sinks")
    elif not te_available():
        say("- skipped: Transformer Engine not installed (the run used megatron-core's local layers with learnable sinks)")
    else:
        cudnn = cuda_versions()["cuDNN"]
        say(f"- Transformer Engine installed: {te_available()}; cuDNN {cudnn}")
        log = (work / "train.log").read_text()
        backends = sorted({x for x in ("FusedAttention", "FlashAttention", "UnfusedDotProductAttention") if x in log})
        say(f"- attention backends named in the training log: {', '.join(backends) or 'none named (set NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=2 to see)'}")
        say("- packed sequences with sinks need cuDNN >= 9.18 (Megatron-Bridge); this run used unpacked data")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny architecture on CPU (the GPU-only parts are skipped)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the truncated 20b (default 4)")
    ap.add_argument("--gpu", default="h100", help="the planner's GPU table entry for the estimate (default h100)")
    ap.add_argument("--work", default="/tmp/gpu-check", help="scratch directory (data, checkpoints, exports)")
    ap.add_argument("--out", default=str(ROOT / "bench"), help="where gpu_check_<gpu>.md goes (default bench/)")
    args = ap.parse_args()
    lines = check(args)
    import torch

    from kit.fs import write_text_atomic
    from megatron_cpu.training import cuda_available

    name = "cpu-tiny" if not cuda_available() else torch.cuda.get_device_name().lower().replace("nvidia ", "").replace(" ", "-")
    out = Path(args.out) / f"gpu_check_{name}.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
