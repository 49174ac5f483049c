"""Pre-flight planner: catch an impossible layout before a job waits in a queue, and find a good one.

Reads a built recipe (after overrides), an allocation (nodes x GPUs per node) and a GPU type, and
works out without a GPU: the parallel layout and whether it divides, parameters per GPU, an
estimate of memory per GPU, tokens per step, the expected throughput, and steps / GPU-hours for a
token budget. `search` enumerates every layout of the allocation that divides and fits, ranked.

Memory model (checked against every layout Megatron-Bridge verified on H100 80 GB: tests/test_planner.py):
- weights bf16 (2 B/param; fp32 4 B for CPU recipes), main grads fp32 (4 B) or bf16 (2 B), Adam fp32
  master weights + two moments (12 B; 8 B when weights are already fp32). The distributed optimizer
  shards optimizer state over data parallel ranks (dense params) and expert-data-parallel ranks
  (experts). Under LoRA only the adapters have grads and optimizer state.
- the settings that move memory are read as Megatron-Bridge will apply them, not as the config
  spells them: `mixed_precision` (a recipe name such as "bf16_mixed", or a config) overwrites
  ddp.grad_reduce_in_fp32 at setup (bf16_mixed sets True), and either of ddp.use_distributed_optimizer
  / optimizer.use_distributed_optimizer turns both on (the bridge syncs them). A recipe that sets
  ddp.grad_reduce_in_fp32=False or ddp.use_distributed_optimizer=False alone changes nothing; the
  render lists the effective settings and says when the config's own value is overridden.
- activations per token per layer, in elements, stored in bf16:
  attention  5h + 2q + 2kv  (norm inputs and outputs, residual, qkv, core-attention output; flash
             attention keeps no s x s matrix)
  router     2E (fp32 logits)
  experts    k(2h + 3f)  (top-k copies of the token: fc1 in/out, activation, fc2 out)
  divided by TP when sequence parallel is on (otherwise only the attention projections are), and
  multiplied by the microbatches in flight on the first pipeline stage (min(PP, microbatches)
  under 1F1B; x (1 + (PP-1)/(PP*VPP)) with an interleaved schedule). Full recompute keeps only each
  layer's input (h) plus one layer's working set; selective recompute drops what its modules
  recompute (layernorm: the two norm outputs, 2h; moe_act: the experts' activation, k*f; moe / mlp:
  the experts' part but their input, k(h + 3f)).
- logits on the last stage: tokens x vocab/TP x 6 B (bf16 logits + fp32 for the cross entropy).
- distillation (cfg.model.teacher): the teacher's weights in bf16 (frozen: no gradients, no optimizer
  state) sharded by the same TP/PP and the teacher's EP; its activations are one layer's working set
  (forward under no_grad) plus its logits kept for the KD loss (tokens x vocab/TP x 4 B fp32) and the
  student's softmax for the KL (another tokens x vocab/TP x 4 B).
- a fixed 4 GiB for the CUDA context, NCCL buffers and allocator slack.

Throughput: where Megatron-Bridge published a measurement for the same model, job kind, sequence
length, GPU count and layout on H100 (PUBLISHED), the plan uses it, with its source; a measurement
made with another vocabulary (the 32,000-entry placeholder of the bridge's pretrain cards) is scaled
by the FLOPs ratio, and one made with another batch size or recompute setting by the cost model's
ratio. Otherwise it assumes an MFU (DEFAULT_MFU) and says so. --tokens-per-gpu-s / --mfu win.

Cost model of `search` (GPU-seconds per trained token, lower is better; then tok/s/GPU = 1 / that):
- compute  FLOPs/token / (peak x CEILING_MFU), x 4/3 under full recompute (one more forward), x 1.02
           under selective recompute; plus the teacher's forward (2 x its matmul params + attention)
- TP       8 collectives (all-gather / reduce-scatter, forward and backward) of h x 2 B per token
           per layer, (TP-1) GPUs' worth, over NVLink (NVLINK_BYTES_S) when the TP group is inside a
           node, else InfiniBand (IB_BYTES_S)
- EP       dispatch + combine all-to-all, forward and backward: 8 k h B per token per layer; the
           share to other GPUs of the node over NVLink, to other nodes over InfiniBand (EP groups are
           consecutive ranks, Megatron's order)
- CP       a2a of q, k, v and the output, forward and backward: 4 (q + kv) x 2 B per token per
           layer x (CP-1)/CP, NVLink when TP*CP fits in a node
- pipeline bubble  x (1 + (PP-1)/(VPP x microbatches))
- data-parallel gradient traffic is left out: Megatron overlaps it with the backward pass.
Estimates are calibrated on the published measurements of the same model, kind and sequence length
(geometric mean of measured / modelled), so the absolute numbers follow what was measured. Ranking
score = estimate x risk: a layout not measured as it stands (layout, micro batch and recompute)
pays UNMEASURED_DISCOUNT (the model's error on the anchors is of that order: a measured layout
wins unless the model promises clearly more), and
a layout with less than 10% memory headroom pays its shortfall (allocator fragmentation, routing
imbalance). Micro batch > 1 is modelled as no faster (larger bubble, more memory): MoE GEMMs at these
sizes are already large.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any

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


# Megatron-Bridge's 20b verification card: 5,851 tok/s/GPU on H100 ~ 12% MFU ("not perf-tuned").
DEFAULT_MFU = 0.12
# The tuned 120b perf recipe's 158 TFLOP/s of 989: the GEMM-bound ceiling the cost model starts from.
CEILING_MFU = 0.16
NVLINK_BYTES_S = 450e9  # H100 NVLink 4, per GPU per direction
IB_BYTES_S = 50e9  # one 400 Gb/s NIC per GPU
UNMEASURED_DISCOUNT = 0.85
HEADROOM = 0.10
RUNTIME_OVERHEAD_GIB = 4.0
PLACEHOLDER_VOCAB = 32_000  # the SentencePiece placeholder of Megatron-Bridge's pretrain cards


@dataclass(frozen=True)
class Published:
    """A throughput Megatron-Bridge measured on H100 (bf16) and the settings it was measured with."""

    tokens_per_gpu_s: float
    source: str
    gbs: int
    recompute: tuple[str | None, tuple[str, ...]] = (None, ())
    vocab: int = VOCAB_SIZE


_CARD = "Megatron-Bridge {} verification card (H100, nemo:26.06; a sanity run, not perf-tuned)"
_SEL_MOE_ACT = ("selective", ("moe_act",))
# (size, job kind, sequence length, GPUs, TP, PP, EP, CP) -> measurement. Kinds: pretrain (also
# continued pretraining: the same compute), sft, lora. Sources: examples/model_verification_cards/
# gpt-oss-{20b,120b}/card.yaml and docs/performance-summary-archive.md of Megatron-Bridge.
PUBLISHED: dict[tuple[str, str, int, int, int, int, int, int], Published] = {
    ("20b", "pretrain", 4096, 16, 2, 4, 4, 1): Published(
        5851.2, _CARD.format("gpt-oss-20b"), 512, vocab=PLACEHOLDER_VOCAB
    ),
    ("20b", "sft", 2048, 8, 1, 1, 8, 1): Published(4950.7, _CARD.format("gpt-oss-20b"), 128),
    ("20b", "lora", 2048, 1, 1, 1, 1, 1): Published(5171.5, _CARD.format("gpt-oss-20b"), 128),
    ("20b", "sft", 32768, 8, 4, 1, 8, 2): Published(
        428.2, _CARD.format("gpt-oss-20b") + ", long context", 32, ("full", ())
    ),
    ("120b", "pretrain", 4096, 64, 1, 4, 8, 1): Published(
        5824.0,
        "Megatron-Bridge performance summary, nemo 26.04.01, H100 perf recipe (mock data, forced balanced routing)",
        1280,
        ("selective", ("layernorm", "moe_act")),
    ),
    ("120b", "pretrain", 4096, 64, 2, 4, 16, 1): Published(
        1966.3, _CARD.format("gpt-oss-120b"), 512, vocab=PLACEHOLDER_VOCAB
    ),
    ("120b", "sft", 2048, 32, 2, 4, 8, 1): Published(1016.0, _CARD.format("gpt-oss-120b"), 128, _SEL_MOE_ACT),
    ("120b", "sft", 32768, 48, 2, 6, 4, 4): Published(
        112.0, _CARD.format("gpt-oss-120b") + ", long context", 4, _SEL_MOE_ACT
    ),
    ("120b", "lora", 2048, 8, 1, 1, 8, 1): Published(2847.1, _CARD.format("gpt-oss-120b"), 128),
}


@dataclass(frozen=True)
class Knobs:
    """The settings `search` varies; `knobs_of(cfg)` reads them from a built recipe."""

    tp: int
    pp: int
    vpp: int | None
    ep: int
    cp: int
    sp: bool
    mbs: int
    recompute: str | None = None  # None | "full" | "selective"
    recompute_modules: tuple[str, ...] = ()

    def describe(self) -> str:
        rc = {None: "off", "full": "full"}.get(self.recompute, f"sel({','.join(self.recompute_modules)})")
        return f"TP{self.tp} PP{self.pp} VPP{self.vpp or 1} EP{self.ep} CP{self.cp}{' SP' if self.sp else ''} mbs{self.mbs} rc {rc}"


def knobs_of(cfg: Any) -> Knobs:
    m = cfg.model
    granularity = getattr(m, "recompute_granularity", None)
    return Knobs(
        tp=m.tensor_model_parallel_size,
        pp=m.pipeline_model_parallel_size,
        vpp=m.virtual_pipeline_model_parallel_size,
        ep=m.expert_model_parallel_size,
        cp=m.context_parallel_size,
        sp=bool(m.sequence_parallel),
        mbs=cfg.train.micro_batch_size,
        recompute=granularity,
        recompute_modules=tuple(getattr(m, "recompute_modules", None) or ()) if granularity == "selective" else (),
    )


@dataclass
class Plan:
    recipe: str
    nodes: int
    gpus_per_node: int
    gpu: Gpu
    layout: dict[str, int | bool | None] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    memory_gib: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    throughput_basis: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def total_gib(self) -> float:
        return next(v for k, v in self.memory_gib.items() if k.startswith("TOTAL"))

    def render(self) -> str:
        lay = self.layout
        lines = [
            f"recipe {self.recipe} on {self.nodes} node(s) x {self.gpus_per_node} GPU(s) = "
            f"{self.nodes * self.gpus_per_node} x {self.gpu.name}",
            "layout: " + " ".join(f"{k.upper()}={v}" for k, v in lay.items()),
            "parameters: " + ", ".join(f"{k} {v:,}" for k, v in self.params.items()),
            "settings that move memory: " + "; ".join(f"{k} {v}" for k, v in self.settings.items()),
            "memory per GPU (GiB, estimate for the fullest pipeline stage):",
        ]
        for k, v in self.memory_gib.items():
            lines.append(f"  {k:<38} {v:8.2f}")
        lines.append(f"  {'GPU memory':<38} {self.gpu.memory_gib:8.2f}")
        t = self.throughput
        teacher = (
            f" (teacher forward {t['teacher_flops_per_token'] / 1e9:.2f} G of it)"
            if t.get("teacher_flops_per_token")
            else ""
        )
        lines.append(
            f"tokens/step {int(t['tokens_per_step']):,}; model FLOPs/token {t['flops_per_token'] / 1e9:.2f} G{teacher}; "
            f"{t['tokens_per_gpu_s']:,.0f} tok/s/GPU (MFU {t['mfu']:.1%}), {self.throughput_basis}"
        )
        if "tokens" in t:
            lines.append(
                f"budget {t['tokens']:.3g} tokens: {int(t['steps']):,} steps, {t['wall_hours']:,.1f} h wall, "
                f"{t['gpu_hours']:,.0f} GPU-hours"
            )
        lines += self.notes
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


# ---------------------------------------------------------------------------------------------
# What the planner reads from a recipe (once), and from a layout (per candidate)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    """The layout-independent facts of a built recipe, read once (a search reuses them)."""

    arch: GptOssArch
    teacher: GptOssArch | None
    kind: str  # pretrain | sft | lora | distill
    seq: int
    gbs: int
    fp32_model: bool
    grad_fp32: bool
    distributed: bool
    settings: dict[str, str]
    lora_rank: int | None
    lora_targets: tuple[str, ...]
    packed: bool
    local_attention: bool  # megatron.core's own attention (CPU recipes), not Transformer Engine's


def _mixed_precision_grad_fp32(mp: Any) -> bool | None:
    """grad_reduce_in_fp32 as the recipe's mixed_precision will set it on ddp (None: not set)."""
    if mp is None:
        return None
    if isinstance(mp, str):
        from megatron.bridge.training.mixed_precision import get_mixed_precision_config

        mp = get_mixed_precision_config(mp)
    return getattr(mp, "grad_reduce_in_fp32", None)


def _read_recipe(cfg: Any) -> _Recipe:
    m = cfg.model
    fp32_model = getattr(m, "params_dtype", None) is not None and str(m.params_dtype) == "torch.float32"
    ddp_fp32 = bool(getattr(cfg.ddp, "grad_reduce_in_fp32", True))
    mp_fp32 = _mixed_precision_grad_fp32(getattr(cfg, "mixed_precision", None))
    grad_fp32 = fp32_model or (ddp_fp32 if mp_fp32 is None else mp_fp32)
    ddp_dist = bool(getattr(cfg.ddp, "use_distributed_optimizer", False))
    opt_dist = bool(getattr(getattr(cfg, "optimizer", None), "use_distributed_optimizer", False))
    distributed = ddp_dist or opt_dist

    grads = "fp32" if grad_fp32 else "bf16"
    if mp_fp32 is not None and mp_fp32 != ddp_fp32 and not fp32_model:
        mp_name = cfg.mixed_precision if isinstance(cfg.mixed_precision, str) else type(cfg.mixed_precision).__name__
        grads += f" (mixed_precision {mp_name!r} overrides ddp.grad_reduce_in_fp32={ddp_fp32})"
    dist = "on" if distributed else "off"
    if distributed and not ddp_dist:
        dist += " (optimizer.use_distributed_optimizer=True: the bridge turns ddp's on too)"
    granularity = getattr(m, "recompute_granularity", None)
    rc = {None: "off", "full": "full"}.get(
        granularity, f"{granularity} ({', '.join(getattr(m, 'recompute_modules', None) or ())})"
    )
    settings = {"main grads": grads, "distributed optimizer": dist, "recompute": rc}

    peft = getattr(cfg, "peft", None)
    teacher = getattr(m, "teacher", None)
    packed = getattr(cfg.dataset, "packed_sequence_specs", None) is not None or bool(
        getattr(cfg.dataset, "enable_offline_packing", False)
    )
    kind = "distill" if teacher is not None else "lora" if peft is not None else "sft" if packed else "pretrain"
    return _Recipe(
        arch=GptOssArch.from_provider(m),
        teacher=GptOssArch.from_provider(teacher) if teacher is not None else None,
        kind=kind,
        seq=cfg.dataset.seq_length,
        gbs=cfg.train.global_batch_size,
        fp32_model=fp32_model,
        grad_fp32=grad_fp32,
        distributed=distributed,
        settings=settings,
        lora_rank=peft.dim if peft is not None else None,
        lora_targets=tuple(peft.target_modules) if peft is not None else (),
        packed=packed,
        local_attention=getattr(m, "transformer_impl", "transformer_engine") != "transformer_engine",
    )


@dataclass(frozen=True)
class _Setup:
    """A recipe on an allocation with a layout: plain numbers from here on."""

    r: _Recipe
    k: Knobs
    world: int
    gpus_per_node: int
    teacher_ep: int

    @property
    def arch(self) -> GptOssArch:
        return self.r.arch

    @property
    def dp(self) -> int:
        return max(self.world // (self.k.tp * self.k.pp * self.k.cp), 1)

    @property
    def microbatches(self) -> int:
        return max(self.r.gbs // (self.k.mbs * self.dp), 1)

    def layers_per_stage(self, arch: GptOssArch | None = None) -> int:
        return max((arch or self.arch).num_layers // self.k.pp, 1)


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


def plan(
    cfg,
    *,
    recipe: str,
    nodes: int,
    gpus_per_node: int,
    gpu: str = "h100",
    tokens: float | None = None,
    mfu: float | None = None,
    tokens_per_gpu_s: float | None = None,
    knobs: Knobs | None = None,
) -> Plan:
    """Check `cfg` (a built recipe) against nodes x gpus_per_node GPUs of type `gpu`: the layout rules,
    parameters and memory per GPU, and the throughput and budget. `knobs` replaces the recipe's
    layout for this plan (cfg is not changed; `search` uses it)."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {sorted(GPUS)}")
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes ({nodes}) and gpus-per-node ({gpus_per_node}) must be >= 1")
    return _plan(cfg, _read_recipe(cfg), knobs, recipe, nodes, gpus_per_node, gpu, tokens, mfu, tokens_per_gpu_s)


def _plan(cfg, r: _Recipe, knobs, recipe, nodes, gpus_per_node, gpu, tokens, mfu, tokens_per_gpu_s) -> Plan:
    teacher_model = getattr(cfg.model, "teacher", None)
    k = knobs or knobs_of(cfg)
    teacher_ep = k.ep if knobs or teacher_model is None else teacher_model.expert_model_parallel_size
    s = _Setup(r=r, k=k, world=nodes * gpus_per_node, gpus_per_node=gpus_per_node, teacher_ep=teacher_ep)
    p = Plan(recipe=recipe, nodes=nodes, gpus_per_node=gpus_per_node, gpu=GPUS[gpu])
    p.violations = _rules(cfg, s, layout_from_cfg=knobs is None)
    p.layout = {"tp": k.tp, "pp": k.pp, "vpp": k.vpp, "ep": k.ep, "etp": _etp(cfg), "cp": k.cp, "dp": s.dp, "sp": k.sp}
    dense_gpu, expert_gpu = _params_per_gpu(s, r.arch, k.ep)
    p.params = {
        "total": r.arch.total_params(),
        "active/token": r.arch.active_params(),
        "per GPU (fullest stage)": dense_gpu + expert_gpu,
        "experts per GPU": expert_gpu,
    }
    p.settings = dict(r.settings)
    if knobs is not None:
        p.settings["recompute"] = {None: "off", "full": "full"}.get(
            k.recompute, f"selective ({', '.join(k.recompute_modules)})"
        )
    p.memory_gib, lora = _memory_gib(s, dense_gpu, expert_gpu)
    if lora is not None:
        p.params["trainable (LoRA) per GPU"] = lora
    if r.teacher is not None:
        p.params["teacher per GPU (frozen)"] = sum(_params_per_gpu(s, r.teacher, s.teacher_ep))
    if p.total_gib > p.gpu.memory_gib:
        hint = "" if k.recompute == "full" else "; try model.recompute_granularity=full"
        p.violations.append(
            f"estimated {p.total_gib:.1f} GiB per GPU exceeds the {p.gpu.name}'s {p.gpu.memory_gib} GiB: "
            f"raise PP/EP/TP, lower micro batch, or use more nodes{hint}"
        )
    p.throughput, p.throughput_basis = _throughput(s, gpu, tokens, mfu, tokens_per_gpu_s)
    from recipes.alm import uses_teacher_targets

    if uses_teacher_targets(cfg):
        # the teacher ran once, offline (`inference score`): nothing of it in GPU memory or in the step
        p.notes.append(
            "teacher targets (likelihood matching): +4 bytes per token read beside the text (the dataset's size again "
            "on disk); no teacher in memory or in the step; scoring the corpus once costs 2 x teacher params FLOPs per "
            "teacher token (StarCoder-15.5B: 31 GFLOP)"
        )
        if k.cp > 1:
            p.violations.append(f"CP={k.cp}: teacher targets are not split for context parallelism: use CP=1")
    return p


def _etp(cfg) -> int:
    return cfg.model.expert_tensor_parallel_size or 1


def _rules(cfg, s: _Setup, *, layout_from_cfg: bool = True) -> list[str]:
    """Every rule the layout breaks: the architecture's own (GptOssArch.layout_problems), then the
    allocation's, the batch's, the sequence's, the tokenizer's and the teacher's."""
    v = []
    k, etp = s.k, _etp(cfg)
    model_parallel = k.tp * k.pp * k.cp
    if s.world % model_parallel:
        v.append(f"world size {s.world} is not divisible by TP*PP*CP = {k.tp}*{k.pp}*{k.cp} = {model_parallel}")
    v += s.arch.layout_problems(tp=k.tp, pp=k.pp, ep=k.ep, etp=etp, vpp=k.vpp)
    if (k.tp * k.cp * s.dp) % (etp * k.ep):
        v.append(f"EP*ETP = {k.ep}*{etp} does not divide TP*CP*DP = {k.tp}*{k.cp}*{s.dp} (ranks of one pipeline stage)")
    from recipes.qat import layout_problems as mxfp4_qat_problems

    v += mxfp4_qat_problems(cfg, etp)  # MXFP4 QAT: no ETP shard may cut a 32-value block
    if s.r.gbs % (k.mbs * s.dp):
        v.append(f"global batch {s.r.gbs} not divisible by micro batch x DP = {k.mbs}*{s.dp} = {k.mbs * s.dp}")
    if k.vpp and k.pp > 1 and s.microbatches % k.pp:
        v.append(
            f"VPP={k.vpp}: {s.microbatches} microbatches a step (GBS/(MBS*DP)) is not a multiple of PP={k.pp}, "
            "which Megatron's interleaved schedule needs"
        )
    if s.r.packed and k.mbs != 1:
        v.append(f"micro batch {k.mbs} with packed sequences: the bridge needs train.micro_batch_size=1")
    if k.cp > 1 and s.r.seq % (2 * k.cp):
        v.append(f"sequence length {s.r.seq} not divisible by 2*CP = {2 * k.cp}")
    if k.cp > 1 and s.r.local_attention:
        v.append(
            f"CP={k.cp} needs Transformer Engine attention: megatron.core's local DotProductAttention (the CPU "
            "layer spec) asserts context_parallel_size == 1; run tiny recipes with CP=1"
        )
    if k.cp > 1 and s.r.packed:
        mult = getattr(getattr(cfg.dataset, "offline_packing_specs", None), "pad_seq_to_mult", 1) or 1
        if mult % (2 * k.cp):
            v.append(
                f"packed sequences padded to a multiple of {mult}, CP={k.cp} needs 2*CP = {2 * k.cp}: set pad_seq_to_mult"
            )
    if k.sp and (s.r.seq // k.cp) % k.tp:
        v.append(f"sequence length per CP rank {s.r.seq // k.cp} not divisible by TP={k.tp} (sequence parallel)")
    if cfg.model.seq_length != s.r.seq:
        v.append(f"model.seq_length {cfg.model.seq_length} != dataset.seq_length {s.r.seq}: set both")
    if s.arch.vocab_size != VOCAB_SIZE:
        v.append(f"model vocab {s.arch.vocab_size} != o200k_harmony's {VOCAB_SIZE}: the tokenizer and model disagree")
    if getattr(cfg.tokenizer, "use_tokenizer_vocab_size", False):
        v.append("tokenizer.use_tokenizer_vocab_size=true would resize the vocabulary away from the checkpoint's")
    if s.r.teacher is not None:
        v += _teacher_rules(cfg, s, layout_from_cfg)
    return v


_SHARED_WITH_TEACHER = (
    ("TP", "tensor_model_parallel_size"),
    ("PP", "pipeline_model_parallel_size"),
    ("CP", "context_parallel_size"),
    ("seq_length", "seq_length"),
    ("pipeline_dtype", "pipeline_dtype"),
)


def _teacher_rules(cfg, s: _Setup, layout_from_cfg: bool) -> list[str]:
    """Logit distillation's rules: what Megatron-Bridge's DistillationProvider and ModelOpt require."""
    student, teacher, v = cfg.model, cfg.model.teacher, []
    if layout_from_cfg:  # a search applies one layout to both models
        for name, attr in _SHARED_WITH_TEACHER:
            a, b = getattr(student, attr, None), getattr(teacher, attr, None)
            if a != b:
                v.append(
                    f"distillation: teacher {name}={b} != student {name}={a}: Megatron-Bridge's DistillationProvider "
                    "needs the same TP, PP, CP, seq_length and pipeline_dtype (set model.teacher.* to match)"
                )
    if s.k.vpp:
        v.append(f"distillation: VPP={s.k.vpp}: ModelOpt knowledge distillation refuses virtual pipeline parallelism")
    if s.r.teacher.vocab_size != s.arch.vocab_size:
        v.append(
            f"distillation: teacher vocab {s.r.teacher.vocab_size} != student vocab {s.arch.vocab_size}: logit KD needs "
            "the same tokenizer; distill through the teacher's generations instead (python -m inference generate)"
        )
    etp = getattr(teacher, "expert_tensor_parallel_size", None) or 1
    v += [
        f"teacher: {x}"
        for x in s.r.teacher.layout_problems(tp=s.k.tp, pp=s.k.pp, ep=s.teacher_ep, etp=etp, vpp=s.k.vpp)
    ]
    if (s.k.tp * s.k.cp * s.dp) % (etp * s.teacher_ep):
        v.append(f"teacher: EP*ETP = {s.teacher_ep}*{etp} does not divide TP*CP*DP = {s.k.tp}*{s.k.cp}*{s.dp}")
    return v


def _params_per_gpu(s: _Setup, a: GptOssArch, ep: int) -> tuple[int, int]:
    """(dense, expert) parameters of `a` on the fullest GPU: a pipeline stage's layers, attention
    split by TP, experts by EP (ETP is 1), the embedding on the first stage and the LM head on the last."""
    tp, pp = s.k.tp, s.k.pp
    layers = s.layers_per_stage(a)
    replicated = a.norm_params_per_layer() + a.router_params_per_layer()
    dense_stage = layers * (a.attention_params_per_layer() // tp + replicated)
    emb, out = a.embedding_params() // tp, a.output_params() // tp
    dense_first = dense_stage + emb + (out if pp == 1 else 0)
    dense_last = dense_stage + out + (emb if pp == 1 else 0)
    expert_gpu = layers * a.expert_params_per_layer() // max(ep, 1)
    return max(dense_first, dense_last), expert_gpu


def _activation_elements(a: GptOssArch, k: Knobs, *, dropped: tuple[str, ...] = ()) -> float:
    """Activation elements kept per token per layer (module docstring), less what `dropped` recomputes."""
    h, q, kv, f, top, E = (
        a.hidden_size,
        a.q_width,
        a.kv_width,
        a.expert_ffn_hidden_size,
        a.experts_per_token,
        a.num_experts,
    )
    norms = 0 if "layernorm" in dropped else 2 * h
    experts = top * (2 * h + 3 * f)
    if "moe" in dropped or "mlp" in dropped:
        experts = top * h
    elif "moe_act" in dropped:
        experts -= top * f
    attention = 3 * h + norms
    if k.sp:
        return (attention + 2 * q + 2 * kv + 2 * E + experts) / k.tp
    return attention + (2 * q + 2 * kv) / k.tp + 2 * E + experts


def _memory_gib(s: _Setup, dense_gpu: int, expert_gpu: int) -> tuple[dict[str, float], int | None]:
    """The memory model of the module docstring, per GPU; also the LoRA parameters per GPU (or None)."""
    r, k, a = s.r, s.k, s.arch
    w_bytes = 4 if r.fp32_model else 2
    opt_bytes = 8 if r.fp32_model else 12
    grad_bytes = 4 if r.grad_fp32 else w_bytes
    dense_shards = s.dp * k.cp if r.distributed else 1
    expert_dp = max(s.world // (k.pp * k.ep), 1)  # ETP is 1
    expert_shards = expert_dp if r.distributed else 1
    weights = (dense_gpu + expert_gpu) * w_bytes
    lora = None
    if r.lora_rank is not None:
        lora = s.layers_per_stage() * _lora_params_per_layer(a, r.lora_rank, list(r.lora_targets)) // max(k.tp, 1)
        grads = lora * 4
        optim = lora * opt_bytes / dense_shards
        weights += lora * w_bytes
    else:
        grads = (dense_gpu + expert_gpu) * grad_bytes
        optim = dense_gpu * opt_bytes / dense_shards + expert_gpu * opt_bytes / expert_shards

    act_bytes = 4 if r.fp32_model else 2  # bf16 activations (the fp32 CPU recipes keep 4)
    tokens_mb = r.seq * k.mbs / k.cp
    layer_act = tokens_mb * _activation_elements(a, k) * act_bytes
    in_flight = min(k.pp, s.microbatches)
    if k.vpp:
        in_flight *= 1 + (k.pp - 1) / (k.pp * k.vpp)
    layers = s.layers_per_stage()
    act_none = layers * layer_act * in_flight
    checkpointed_input = tokens_mb * a.hidden_size * act_bytes / (k.tp if k.sp else 1)
    act_full = layers * checkpointed_input * in_flight + layer_act
    logits = tokens_mb * a.vocab_size / k.tp * 6
    mem = {
        "weights": weights / GiB,
        f"gradients ({'fp32' if grad_bytes == 4 else 'bf16'} main grads)": grads / GiB,
        "optimizer states": optim / GiB,
        "activations, no recompute": act_none / GiB,
        "activations, full recompute": act_full / GiB,
    }
    if k.recompute == "full":
        act, label = act_full, "full recompute"
    elif k.recompute == "selective":
        act = layers * tokens_mb * _activation_elements(a, k, dropped=k.recompute_modules) * act_bytes * in_flight
        label = f"selective recompute ({', '.join(k.recompute_modules)})"
        mem[f"activations, {label}"] = act / GiB
    else:
        act, label = act_none, "no recompute"
    mem["logits + loss (last stage)"] = logits / GiB
    extra = 0.0
    if r.teacher is not None:
        t_dense, t_expert = _params_per_gpu(s, r.teacher, s.teacher_ep)
        t_weights = (t_dense + t_expert) * w_bytes
        t_layer = tokens_mb * _activation_elements(r.teacher, k) * act_bytes
        kd_logits = 2 * tokens_mb * a.vocab_size / k.tp * 4  # the teacher's fp32 logits + the student's softmax
        mem["teacher weights (bf16, frozen)" if w_bytes == 2 else "teacher weights (fp32, frozen)"] = t_weights / GiB
        mem["teacher activations + logits"] = (t_layer + kd_logits) / GiB
        extra = t_weights + t_layer + kd_logits
    mem["runtime overhead"] = RUNTIME_OVERHEAD_GIB
    total = (weights + grads + optim + act + logits + extra) / GiB + RUNTIME_OVERHEAD_GIB
    mem[f"TOTAL ({label})"] = total
    return mem, lora


# ---------------------------------------------------------------------------------------------
# Throughput: published measurements, the cost model, the budget
# ---------------------------------------------------------------------------------------------


def _flops(s: _Setup) -> tuple[float, float]:
    """(model FLOPs per trained token including the teacher's forward, the teacher's share)."""
    student = s.arch.train_flops_per_token(s.r.seq)
    teacher = s.r.teacher.train_flops_per_token(s.r.seq) / 3 if s.r.teacher is not None else 0.0
    return student + teacher, teacher


def _bandwidth(group_span: int, gpus_per_node: int) -> float:
    return NVLINK_BYTES_S if group_span <= gpus_per_node else IB_BYTES_S


def model_gpu_seconds_per_token(s: _Setup, gpu: Gpu) -> float:
    """The cost model of the module docstring (uncalibrated): GPU-seconds per trained token."""
    k, g = s.k, s.gpus_per_node
    train, teacher = _flops(s)
    student = train - teacher
    rc = {"full": 4 / 3, "selective": 1.02}.get(k.recompute, 1.0)
    seconds = (student * rc + teacher) / (gpu.bf16_tflops * 1e12 * CEILING_MFU)
    layers = s.arch.num_layers + (s.r.teacher.num_layers if s.r.teacher is not None else 0)
    a = s.arch
    if k.tp > 1:
        seconds += layers * 8 * (k.tp - 1) * a.hidden_size * 2 / _bandwidth(k.tp, g)
    if k.ep > 1:
        in_node, off_node = (min(k.ep, g) - 1) / k.ep, max(k.ep - g, 0) / k.ep
        per_layer = 8 * a.experts_per_token * a.hidden_size
        seconds += layers * per_layer * (in_node / NVLINK_BYTES_S + off_node / IB_BYTES_S)
    if k.cp > 1:
        per_layer = 4 * (a.q_width + a.kv_width) * 2 * (k.cp - 1) / k.cp
        seconds += layers * per_layer / _bandwidth(k.tp * k.cp, g)
    bubble = (k.pp - 1) / ((k.vpp or 1) * s.microbatches)
    return seconds * (1 + bubble)


def _published_for(s: _Setup, gpu: str, k: Knobs | None = None) -> Published | None:
    k = k or s.k
    if gpu != "h100" or k.vpp:
        return None
    return PUBLISHED.get((s.arch.name, s.r.kind, s.r.seq, s.world, k.tp, k.pp, k.ep, k.cp))


def _anchor_setup(s: _Setup, key: tuple, pub: Published) -> _Setup:
    """The setup a published figure was measured with (its layout, batch and recompute)."""
    _, _, _, world, tp, pp, ep, cp = key
    rc, modules = pub.recompute
    k = Knobs(tp=tp, pp=pp, vpp=None, ep=ep, cp=cp, sp=tp > 1, mbs=1, recompute=rc, recompute_modules=modules)
    return replace(s, k=k, world=world, r=replace(s.r, gbs=pub.gbs))


def _measured_tokens_per_gpu_s(s: _Setup, pub: Published) -> float:
    """A published figure at this recipe's vocabulary (FLOPs ratio when measured with another)."""
    if pub.vocab == s.arch.vocab_size:
        return pub.tokens_per_gpu_s
    measured = replace(s, r=replace(s.r, arch=replace(s.arch, vocab_size=pub.vocab)))
    return pub.tokens_per_gpu_s * _flops(measured)[0] / _flops(s)[0]


def estimate(s: _Setup, gpu: str) -> tuple[float, str]:
    """(tok/s/GPU, basis) for this setup: a published measurement adjusted by the cost model for
    the differences in batch and recompute, else the cost model calibrated on the measurements of the
    same model, kind and sequence length, else the raw cost model."""
    g = GPUS[gpu]
    model_tps = 1 / model_gpu_seconds_per_token(s, g)
    anchors = [
        (key, pub) for key, pub in PUBLISHED.items() if gpu == "h100" and key[:3] == (s.arch.name, s.r.kind, s.r.seq)
    ]
    pub = _published_for(s, gpu)
    if pub is not None:
        key = next(key for key, p in anchors if p is pub)
        anchor = _anchor_setup(s, key, pub)
        tps = _measured_tokens_per_gpu_s(s, pub) * model_tps * model_gpu_seconds_per_token(anchor, g)
        same = (s.k.mbs, s.k.recompute, s.k.recompute_modules) == (1, *pub.recompute)
        how = "measured" if same else "from a measurement, adjusted for micro batch / recompute"
        return tps, f"{how}: {pub.tokens_per_gpu_s:,.0f} published ({pub.source})"
    if anchors:
        ratios = [
            _measured_tokens_per_gpu_s(s, p) * model_gpu_seconds_per_token(_anchor_setup(s, key, p), g)
            for key, p in anchors
        ]
        return model_tps * math.prod(ratios) ** (
            1 / len(ratios)
        ), f"modelled (calibrated on {len(anchors)} measurement(s))"
    return model_tps, "modelled (uncalibrated)"


def _throughput(s: _Setup, gpu: str, tokens: float | None, mfu: float | None, tokens_per_gpu_s: float | None):
    """Tokens per step, the throughput (--tokens-per-gpu-s, --mfu, a published measurement, or the
    assumed DEFAULT_MFU) and, for a token budget, steps, wall hours and GPU-hours."""
    peak = GPUS[gpu].bf16_tflops * 1e12
    flops, teacher = _flops(s)
    pub = _published_for(s, gpu)
    if tokens_per_gpu_s:
        tps, basis = tokens_per_gpu_s, "as given (--tokens-per-gpu-s)"
    elif mfu:
        tps, basis = mfu * peak / flops, f"assumed MFU {mfu:.0%} (--mfu)"
    elif pub is not None:
        tps, basis = estimate(s, gpu)
        basis = f"{basis}; adjusted to this recipe's vocabulary, batch and recompute"
    else:
        tps, basis = (
            DEFAULT_MFU * peak / flops,
            f"assumed MFU {DEFAULT_MFU:.0%} (no published measurement of this layout)",
        )
    t = {
        "tokens_per_step": float(s.r.gbs * s.r.seq),
        "flops_per_token": flops,
        "tokens_per_gpu_s": tps,
        "mfu": tps * flops / peak,
    }
    if teacher:
        t["teacher_flops_per_token"] = teacher
    if tokens:
        t["tokens"] = tokens
        t["steps"] = math.ceil(tokens / (s.r.gbs * s.r.seq))
        t["wall_hours"] = tokens / (tps * s.world) / 3600
        t["gpu_hours"] = t["wall_hours"] * s.world
    return t, basis


# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    knobs: Knobs
    plan: Plan
    tokens_per_gpu_s: float
    basis: str
    score: float

    @property
    def measured(self) -> bool:
        """Measured as it stands: the published layout, micro batch and recompute."""
        return self.basis.startswith("measured")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _candidates(r: _Recipe, base: Knobs, world: int, gpus_per_node: int):
    """Every layout worth planning: TP within a node and dividing the heads, PP dividing the layers,
    VPP up to 4 (none for distillation), EP dividing the experts, CP up to 8 for sequences of 8k and
    more, micro batch 1/2/4 (1 when packed), recompute as the recipe has it, off or full."""
    a = r.arch
    heads = math.gcd(a.num_attention_heads, a.num_key_value_heads)
    tps = [t for t in _divisors(heads) if t <= gpus_per_node and world % t == 0]
    pps = [p for p in _divisors(a.num_layers) if world % p == 0]
    eps = [e for e in _divisors(a.num_experts) if world % e == 0]
    if r.teacher is not None:
        eps = [e for e in eps if r.teacher.num_experts % e == 0]
    cps = [c for c in (1, 2, 4, 8) if r.seq >= 8192 * c // 2 and r.seq % (2 * c) == 0] or [1]
    mbss = [1] if r.packed else [1, 2, 4]
    rcs = list(dict.fromkeys([(base.recompute, base.recompute_modules), (None, ()), ("full", ())]))
    for tp, pp, ep, cp, mbs, (rc, modules) in itertools.product(tps, pps, eps, cps, mbss, rcs):
        if world % (tp * pp * cp) or ((tp * cp * world // (tp * pp * cp)) % ep):
            continue
        vpps = (
            [None]
            if r.teacher is not None or pp == 1
            else [None] + [v for v in (2, 3, 4) if a.num_layers % (pp * v) == 0]
        )
        for vpp in vpps:
            yield Knobs(
                tp=tp, pp=pp, vpp=vpp, ep=ep, cp=cp, sp=tp > 1, mbs=mbs, recompute=rc, recompute_modules=modules
            )


def search(cfg, *, recipe: str, nodes: int, gpus_per_node: int, gpu: str = "h100", top: int = 10) -> list[Candidate]:
    """The `top` layouts of this allocation that divide and fit, best first (the module docstring's
    cost model and score). The recipe is read once; cfg is not changed."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {sorted(GPUS)}")
    r = _read_recipe(cfg)
    world, mem = nodes * gpus_per_node, GPUS[gpu].memory_gib
    found = []
    for k in _candidates(r, knobs_of(cfg), world, gpus_per_node):
        p = _plan(cfg, r, k, recipe, nodes, gpus_per_node, gpu, None, None, None)
        if not p.ok:
            continue
        s = _Setup(r=r, k=k, world=world, gpus_per_node=gpus_per_node, teacher_ep=k.ep)
        tps, basis = estimate(s, gpu)
        headroom = 1 - p.total_gib / mem
        c = Candidate(k, p, tps, basis, 0.0)
        c.score = tps * (1.0 if c.measured else UNMEASURED_DISCOUNT) * min(1.0, 1 - HEADROOM + headroom)
        found.append(c)
    found.sort(key=lambda c: -c.score)
    return found[:top]


def render_search(found: list[Candidate], *, recipe: str, nodes: int, gpus_per_node: int, gpu: str) -> str:
    head = f"layouts of {recipe} on {nodes} x {gpus_per_node} {GPUS[gpu].name}, best first (score = estimate x risk):"
    if not found:
        return head + "\n  none divides and fits: more nodes, or a larger GPU"
    rows = [head, f"  {'#':>2}  {'layout':<44} {'tok/s/GPU':>9} {'GiB':>6}  basis"]
    for i, c in enumerate(found, 1):
        rows.append(f"  {i:>2}  {c.knobs.describe():<44} {c.tokens_per_gpu_s:9,.0f} {c.plan.total_gib:6.1f}  {c.basis}")
    return "\n".join(rows)


def overrides_for(k: Knobs) -> list[str]:
    """The key=value overrides that set a recipe to this layout (what `plan --search` prints)."""
    vpp = "null" if k.vpp is None else str(k.vpp)
    out = [
        f"model.tensor_model_parallel_size={k.tp}",
        f"model.pipeline_model_parallel_size={k.pp}",
        f"model.virtual_pipeline_model_parallel_size={vpp}",
        f"model.expert_model_parallel_size={k.ep}",
        f"model.context_parallel_size={k.cp}",
        f"model.sequence_parallel={str(k.sp).lower()}",
        f"train.micro_batch_size={k.mbs}",
        f"model.recompute_granularity={k.recompute or 'null'}",
    ]
    if k.recompute == "full":
        out += ["model.recompute_method=uniform", "model.recompute_num_layers=1"]
    if k.recompute == "selective":
        out.append(f"model.recompute_modules=[{','.join(k.recompute_modules)}]")
    return out
