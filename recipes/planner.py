"""Pre-flight planner: catch an impossible layout before a job waits in a queue.

Reads a built recipe (after overrides), an allocation (nodes x GPUs per node) and a GPU type, and
works out without a GPU: the parallel layout and whether it divides, parameters per GPU, an
estimate of memory per GPU, tokens per step, and steps / GPU-hours for a token budget.

The memory model (documented so that it can be checked and improved against measurements):
- weights bf16 (2 B/param; fp32 4 B for CPU recipes), main grads fp32 (4 B; bf16 2 B with
  ddp.grad_reduce_in_fp32=False), Adam fp32 master
  weights + two moments (12 B; 8 B when weights are already fp32). The distributed optimizer
  shards optimizer state over data parallel ranks (dense params) and expert-data-parallel ranks
  (experts). Under LoRA only the adapters have grads and optimizer state.
- activations per token per layer, in elements, stored in bf16:
  attention  5h + 2q + 2kv  (norm inputs, residual, qkv, core-attention output; flash attention
             keeps no s x s matrix)
  router     2E (fp32 logits)
  experts    k(2h + 3f)  (top-k copies of the token: fc1 in/out, activation, fc2 out)
  divided by TP when sequence parallel is on (otherwise only the attention projections are), and
  multiplied by the microbatches in flight on the first pipeline stage (min(PP, microbatches)
  under 1F1B). Full recompute keeps only each layer's input (h) plus one layer's working set.
- logits on the last stage: tokens x vocab/TP x 6 B (bf16 logits + fp32 for the cross entropy).
- a fixed 4 GiB for the CUDA context, NCCL buffers and allocator slack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gptoss.arch import VOCAB_SIZE, GptOssArch

GiB = 1024**3


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float


# Dense bf16 peaks (no sparsity) from NVIDIA's data sheets; the SXM parts unless named otherwise.
GPUS = {
    "h100": Gpu("H100 80GB", 79.6, 989.0),
    "h100-pcie": Gpu("H100 PCIe 80GB", 79.6, 756.0),
    "h100-nvl": Gpu("H100 NVL 94GB", 93.1, 835.0),
    "h200": Gpu("H200 141GB", 140.4, 989.0),
    "a100": Gpu("A100 80GB", 79.2, 312.0),
    "b200": Gpu("B200 180GB", 178.4, 2250.0),
}


def gpu_from_device_name(device_name: str) -> str | None:
    """The GPUS key of a device as torch names it ("NVIDIA H100 80GB HBM3" -> "h100"), or None for
    a GPU the table does not know (then no MFU is reported rather than a wrong one). An A100 40GB
    or a PCIe A100 has another memory size or peak than the table's: also None."""
    name = device_name.lower()
    for family in ("h200", "b200"):
        if family in name:
            return family
    if "h100" in name:
        return "h100-pcie" if "pcie" in name else "h100-nvl" if "nvl" in name else "h100"
    if "a100" in name and "80gb" in name and "pcie" not in name:
        return "a100"
    return None

# Megatron-Bridge's 20b verification card: 5,851 tok/s/GPU on H100 ~ 13.5% MFU ("not perf-tuned").
DEFAULT_MFU = 0.12
RUNTIME_OVERHEAD_GIB = 4.0


@dataclass
class Plan:
    recipe: str
    nodes: int
    gpus_per_node: int
    gpu: Gpu
    layout: dict[str, int | bool | None] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    memory_gib: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self) -> str:
        lay = self.layout
        lines = [
            f"recipe {self.recipe} on {self.nodes} node(s) x {self.gpus_per_node} GPU(s) = "
            f"{self.nodes * self.gpus_per_node} x {self.gpu.name}",
            "layout: " + " ".join(f"{k.upper()}={v}" for k, v in lay.items()),
            "parameters: " + ", ".join(f"{k} {v:,}" for k, v in self.params.items()),
            "memory per GPU (GiB, estimate for the fullest pipeline stage):",
        ]
        for k, v in self.memory_gib.items():
            lines.append(f"  {k:<34} {v:8.2f}")
        lines.append(f"  {'GPU memory':<34} {self.gpu.memory_gib:8.2f}")
        t = self.throughput
        lines.append(
            f"tokens/step {int(t['tokens_per_step']):,}; model FLOPs/token {t['flops_per_token'] / 1e9:.2f} G; "
            f"assumed {t['tokens_per_gpu_s']:,.0f} tok/s/GPU (MFU {t['mfu']:.1%})"
        )
        if "tokens" in t:
            lines.append(
                f"budget {t['tokens']:.3g} tokens: {int(t['steps']):,} steps, {t['wall_hours']:,.1f} h wall, "
                f"{t['gpu_hours']:,.0f} GPU-hours"
            )
        if self.violations:
            lines.append(f"NOT RUNNABLE: {len(self.violations)} rule(s) violated:")
            lines += [f"  - {v}" for v in self.violations]
        else:
            lines.append("OK: the layout divides and the estimate fits")
        return "\n".join(lines)


def _lora_params_per_layer(a: GptOssArch, rank: int, targets: list[str]) -> int:
    h, q, kv, f = a.hidden_size, a.q_width, a.kv_width, a.expert_ffn_hidden_size
    per = {
        "linear_qkv": rank * (h + q + 2 * kv),
        "linear_proj": rank * (q + h),
        "linear_fc1": a.num_experts * rank * (h + 2 * f),
        "linear_fc2": a.num_experts * rank * (f + h),
    }
    return sum(per.get(t, 0) for t in targets)


@dataclass(frozen=True)
class _Setup:
    """What the planner reads from a built recipe and an allocation (one place, then plain numbers)."""

    arch: GptOssArch
    world: int
    tp: int
    pp: int
    ep: int
    etp: int
    cp: int
    vpp: int | None
    sp: bool
    seq: int
    gbs: int
    mbs: int

    @property
    def dp(self) -> int:
        return max(self.world // (self.tp * self.pp * self.cp), 1)

    @property
    def layers_per_stage(self) -> int:
        return max(self.arch.num_layers // self.pp, 1)


def plan(
    cfg,
    *,
    recipe: str,
    nodes: int,
    gpus_per_node: int,
    gpu: str = "h100",
    tokens: float | None = None,
    mfu: float = DEFAULT_MFU,
    tokens_per_gpu_s: float | None = None,
) -> Plan:
    """Check `cfg` (a built recipe) against nodes x gpus_per_node GPUs of type `gpu`: the layout rules,
    parameters and memory per GPU, and the throughput and budget (each section below)."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {sorted(GPUS)}")
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes ({nodes}) and gpus-per-node ({gpus_per_node}) must be >= 1")
    m = cfg.model
    s = _Setup(
        arch=GptOssArch.from_provider(m),
        world=nodes * gpus_per_node,
        tp=m.tensor_model_parallel_size,
        pp=m.pipeline_model_parallel_size,
        ep=m.expert_model_parallel_size,
        etp=m.expert_tensor_parallel_size or 1,
        cp=m.context_parallel_size,
        vpp=m.virtual_pipeline_model_parallel_size,
        sp=bool(m.sequence_parallel),
        seq=cfg.dataset.seq_length,
        gbs=cfg.train.global_batch_size,
        mbs=cfg.train.micro_batch_size,
    )
    p = Plan(recipe=recipe, nodes=nodes, gpus_per_node=gpus_per_node, gpu=GPUS[gpu])
    p.violations = _rules(cfg, s)
    p.layout = {"tp": s.tp, "pp": s.pp, "vpp": s.vpp, "ep": s.ep, "etp": s.etp, "cp": s.cp, "dp": s.dp, "sp": s.sp}
    dense_gpu, expert_gpu = _params_per_gpu(s)
    p.params = {
        "total": s.arch.total_params(),
        "active/token": s.arch.active_params(),
        "per GPU (fullest stage)": dense_gpu + expert_gpu,
        "experts per GPU": expert_gpu,
    }
    p.memory_gib, lora = _memory_gib(cfg, s, dense_gpu, expert_gpu)
    if lora is not None:
        p.params["trainable (LoRA) per GPU"] = lora
    total = next(v for k, v in p.memory_gib.items() if k.startswith("TOTAL"))
    if total > p.gpu.memory_gib:
        hint = "" if getattr(m, "recompute_granularity", None) == "full" else "; try model.recompute_granularity=full"
        p.violations.append(
            f"estimated {total:.1f} GiB per GPU exceeds the {p.gpu.name}'s {p.gpu.memory_gib} GiB: "
            f"raise PP/EP/TP, lower micro batch, or use more nodes{hint}"
        )
    p.throughput = _throughput(s, p.gpu, tokens, mfu, tokens_per_gpu_s)
    return p


def _rules(cfg, s: _Setup) -> list[str]:
    """Every rule the layout breaks: the architecture's own (GptOssArch.layout_problems), then the
    allocation's, the batch's, the sequence's and the tokenizer's."""
    v = []
    model_parallel = s.tp * s.pp * s.cp
    if s.world % model_parallel:
        v.append(f"world size {s.world} is not divisible by TP*PP*CP = {s.tp}*{s.pp}*{s.cp} = {model_parallel}")
    v += s.arch.layout_problems(tp=s.tp, pp=s.pp, ep=s.ep, etp=s.etp, vpp=s.vpp)
    if (s.tp * s.cp * s.dp) % (s.etp * s.ep):
        v.append(
            f"EP*ETP = {s.ep}*{s.etp} does not divide TP*CP*DP = {s.tp}*{s.cp}*{s.dp} (ranks of one pipeline stage)"
        )
    if s.gbs % (s.mbs * s.dp):
        v.append(f"global batch {s.gbs} not divisible by micro batch x DP = {s.mbs}*{s.dp} = {s.mbs * s.dp}")
    packed = getattr(cfg.dataset, "packed_sequence_specs", None) is not None or getattr(
        cfg.dataset, "enable_offline_packing", False
    )
    if packed and s.mbs != 1:
        v.append(f"micro batch {s.mbs} with packed sequences: the bridge needs train.micro_batch_size=1")
    if s.cp > 1 and s.seq % (2 * s.cp):
        v.append(f"sequence length {s.seq} not divisible by 2*CP = {2 * s.cp}")
    if s.sp and (s.seq // s.cp) % s.tp:
        v.append(f"sequence length per CP rank {s.seq // s.cp} not divisible by TP={s.tp} (sequence parallel)")
    if cfg.model.seq_length != s.seq:
        v.append(f"model.seq_length {cfg.model.seq_length} != dataset.seq_length {s.seq}: set both")
    if s.arch.vocab_size != VOCAB_SIZE:
        v.append(f"model vocab {s.arch.vocab_size} != o200k_harmony's {VOCAB_SIZE}: the tokenizer and model disagree")
    if getattr(cfg.tokenizer, "use_tokenizer_vocab_size", False):
        v.append("tokenizer.use_tokenizer_vocab_size=true would resize the vocabulary away from the checkpoint's")
    return v


def _params_per_gpu(s: _Setup) -> tuple[int, int]:
    """(dense, expert) parameters on the fullest GPU: a pipeline stage's layers, attention split by
    TP, experts by EP x ETP, the embedding on the first stage and the LM head on the last."""
    a = s.arch
    replicated = a.norm_params_per_layer() + a.router_params_per_layer()
    dense_stage = s.layers_per_stage * (a.attention_params_per_layer() // s.tp + replicated)
    emb, out = a.embedding_params() // s.tp, a.output_params() // s.tp
    dense_first = dense_stage + emb + (out if s.pp == 1 else 0)
    dense_last = dense_stage + out + (emb if s.pp == 1 else 0)
    expert_gpu = s.layers_per_stage * a.expert_params_per_layer() // (s.ep * s.etp)
    return max(dense_first, dense_last), expert_gpu


def _memory_gib(cfg, s: _Setup, dense_gpu: int, expert_gpu: int) -> tuple[dict[str, float], int | None]:
    """The memory model of the module docstring, per GPU; also the LoRA parameters per GPU (or None)."""
    m, a = cfg.model, s.arch
    fp32_model = getattr(m, "params_dtype", None) is not None and str(m.params_dtype) == "torch.float32"
    w_bytes = 4 if fp32_model else 2
    opt_bytes = 8 if fp32_model else 12
    # Megatron's DDP keeps main grads in fp32 with grad_reduce_in_fp32, else in the params' dtype
    grad_bytes = 4 if fp32_model or getattr(cfg.ddp, "grad_reduce_in_fp32", True) else w_bytes
    distributed = bool(getattr(cfg.ddp, "use_distributed_optimizer", False))
    dense_shards = s.dp * s.cp if distributed else 1
    expert_dp = max(s.world // (s.pp * s.ep * s.etp), 1)
    expert_shards = expert_dp if distributed else 1
    weights = (dense_gpu + expert_gpu) * w_bytes
    lora = None
    peft = getattr(cfg, "peft", None)
    if peft is not None:
        lora = s.layers_per_stage * _lora_params_per_layer(a, peft.dim, list(peft.target_modules))
        lora = lora // max(s.tp, 1)
        grads = lora * 4
        optim = lora * opt_bytes / dense_shards
        weights += lora * w_bytes
    else:
        grads = (dense_gpu + expert_gpu) * grad_bytes
        optim = dense_gpu * opt_bytes / dense_shards + expert_gpu * opt_bytes / expert_shards

    tokens_mb = s.seq * s.mbs / s.cp
    h, q, kv, f, k, E = (
        a.hidden_size,
        a.q_width,
        a.kv_width,
        a.expert_ffn_hidden_size,
        a.experts_per_token,
        a.num_experts,
    )
    if s.sp:
        per_token = (5 * h + 2 * q + 2 * kv + 2 * E + k * (2 * h + 3 * f)) / s.tp
    else:
        per_token = 5 * h + (2 * q + 2 * kv) / s.tp + 2 * E + k * (2 * h + 3 * f)
    act_bytes = 2  # bf16 activations (fp32 models keep 4, but those are tiny CPU runs)
    if fp32_model:
        act_bytes = 4
    layer_act = tokens_mb * per_token * act_bytes
    num_microbatches = max(s.gbs // (s.mbs * s.dp), 1)
    in_flight = min(s.pp, num_microbatches)
    act_full = s.layers_per_stage * layer_act * in_flight
    checkpointed_input = tokens_mb * h * act_bytes / (s.tp if s.sp else 1)
    act_recompute = s.layers_per_stage * checkpointed_input * in_flight + layer_act
    logits = tokens_mb * a.vocab_size / s.tp * 6
    recompute = getattr(m, "recompute_granularity", None) == "full"
    act = act_recompute if recompute else act_full
    mem = {
        "weights": weights / GiB,
        f"gradients ({'fp32' if grad_bytes == 4 else 'bf16'} main grads)": grads / GiB,
        "optimizer states": optim / GiB,
        "activations, no recompute": act_full / GiB,
        "activations, full recompute": act_recompute / GiB,
        "logits + loss (last stage)": logits / GiB,
        "runtime overhead": RUNTIME_OVERHEAD_GIB,
    }
    total = (weights + grads + optim + act + logits) / GiB + RUNTIME_OVERHEAD_GIB
    mem[f"TOTAL ({'full recompute' if recompute else 'no recompute'})"] = total
    return mem, lora


def _throughput(s: _Setup, gpu: Gpu, tokens: float | None, mfu: float, tokens_per_gpu_s: float | None) -> dict[str, float]:
    """Tokens per step, the assumed throughput (--tokens-per-gpu-s, or --mfu of the GPU's peak) and,
    for a token budget, steps, wall hours and GPU-hours."""
    flops = s.arch.train_flops_per_token(s.seq)
    tps = tokens_per_gpu_s if tokens_per_gpu_s else mfu * gpu.bf16_tflops * 1e12 / flops
    t = {
        "tokens_per_step": float(s.gbs * s.seq),
        "flops_per_token": flops,
        "tokens_per_gpu_s": tps,
        "mfu": tps * flops / (gpu.bf16_tflops * 1e12),
    }
    if tokens:
        t["tokens"] = tokens
        t["steps"] = math.ceil(tokens / (s.gbs * s.seq))
        t["wall_hours"] = tokens / (tps * s.world) / 3600
        t["gpu_hours"] = t["wall_hours"] * s.world
    return t
