"""Pre-flight planner: catch an impossible layout before a job waits in a queue.

Reads a built recipe (after overrides), an allocation (nodes x GPUs per node) and a GPU type, and
works out without a GPU: the parallel layout and whether it divides, parameters per GPU, an
estimate of memory per GPU, tokens per step, and steps / GPU-hours for a token budget.

The memory model (documented so that it can be checked and improved against measurements):
- weights bf16 (2 B/param; fp32 4 B for CPU recipes), main grads fp32 (4 B), Adam fp32 master
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

from gptoss.arch import GptOssArch

GiB = 1024**3


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float


GPUS = {
    "h100": Gpu("H100 80GB", 79.6, 989.0),
    "h200": Gpu("H200 141GB", 140.4, 989.0),
    "a100": Gpu("A100 80GB", 79.2, 312.0),
    "b200": Gpu("B200 180GB", 178.4, 2250.0),
}

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


def arch_of(model) -> GptOssArch:
    """The architecture of a (possibly overridden) model provider: the inverse of
    GptOssArch.megatron_fields, matched to a named variant when it is one."""
    from gptoss.arch import arch_from_hf_config

    arch = GptOssArch(
        name="recipe",
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_query_groups,
        head_dim=model.kv_channels,
        num_experts=model.num_moe_experts,
        experts_per_token=model.moe_router_topk,
        expert_ffn_hidden_size=model.moe_ffn_hidden_size,
        vocab_size=model.vocab_size,
        sliding_window=(model.window_size[0] + 1) if model.window_size else model.seq_length,
        initial_context_length=model.yarn_original_max_position_embeddings,
        rope_theta=model.rotary_base,
        yarn_factor=model.yarn_rotary_scaling_factor,
        yarn_beta_fast=model.yarn_beta_fast,
        yarn_beta_slow=model.yarn_beta_slow,
        swiglu_limit=model.activation_func_clamp_value,
        rms_norm_eps=model.layernorm_epsilon,
    )
    # the provider does not keep max_position_embeddings (the recipe sets seq_length): take a
    # known variant's when everything else matches
    from dataclasses import replace

    from gptoss.arch import ARCHS

    for known in ARCHS.values():
        if (
            replace(arch, name=known.name, hf_id=known.hf_id, max_position_embeddings=known.max_position_embeddings)
            == known
        ):
            return known
    return arch_from_hf_config(arch.hf_config_dict())


def _lora_params_per_layer(a: GptOssArch, rank: int, targets: list[str]) -> int:
    h, q, kv, f = a.hidden_size, a.q_width, a.kv_width, a.expert_ffn_hidden_size
    per = {
        "linear_qkv": rank * (h + q + 2 * kv),
        "linear_proj": rank * (q + h),
        "linear_fc1": a.num_experts * rank * (h + 2 * f),
        "linear_fc2": a.num_experts * rank * (f + h),
    }
    return sum(per.get(t, 0) for t in targets)


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
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {sorted(GPUS)}")
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes ({nodes}) and gpus-per-node ({gpus_per_node}) must be >= 1")
    m = cfg.model
    a = arch_of(m)
    world = nodes * gpus_per_node
    tp, pp, ep, cp = (
        m.tensor_model_parallel_size,
        m.pipeline_model_parallel_size,
        m.expert_model_parallel_size,
        m.context_parallel_size,
    )
    etp = m.expert_tensor_parallel_size or 1
    vpp = m.virtual_pipeline_model_parallel_size
    sp = bool(m.sequence_parallel)
    seq = cfg.dataset.seq_length
    gbs, mbs = cfg.train.global_batch_size, cfg.train.micro_batch_size
    p = Plan(recipe=recipe, nodes=nodes, gpus_per_node=gpus_per_node, gpu=GPUS[gpu])
    v = p.violations

    # ---- the rules ------------------------------------------------------------------------
    model_parallel = tp * pp * cp
    if world % model_parallel:
        v.append(f"world size {world} is not divisible by TP*PP*CP = {tp}*{pp}*{cp} = {model_parallel}")
    dp = max(world // model_parallel, 1)
    if a.num_attention_heads % tp:
        v.append(f"attention heads {a.num_attention_heads} not divisible by TP={tp}")
    if a.num_key_value_heads % tp:
        v.append(f"KV heads (query groups) {a.num_key_value_heads} not divisible by TP={tp}")
    if vpp:
        if pp < 2:
            v.append(f"VPP={vpp} needs PP >= 2 (PP={pp})")
        if a.num_layers % (pp * vpp):
            v.append(f"layers {a.num_layers} not divisible by PP*VPP = {pp}*{vpp}")
    elif a.num_layers % pp:
        v.append(f"layers {a.num_layers} not divisible by PP={pp}")
    if a.num_experts % ep:
        v.append(f"experts {a.num_experts} not divisible by EP={ep}")
    if etp != 1:
        v.append(f"ETP={etp}: gpt-oss experts need expert_tensor_parallel_size=1 (no GLU-aware split under ETP)")
    if (tp * cp * dp) % (etp * ep):
        v.append(f"EP*ETP = {ep}*{etp} does not divide TP*CP*DP = {tp}*{cp}*{dp} (ranks of one pipeline stage)")
    if gbs % (mbs * dp):
        v.append(f"global batch {gbs} not divisible by micro batch x DP = {mbs}*{dp} = {mbs * dp}")
    if getattr(cfg.dataset, "packed_sequence_specs", None) is not None or getattr(
        cfg.dataset, "enable_offline_packing", False
    ):
        if mbs != 1:
            v.append(f"micro batch {mbs} with packed sequences: the bridge needs train.micro_batch_size=1")
    if cp > 1 and seq % (2 * cp):
        v.append(f"sequence length {seq} not divisible by 2*CP = {2 * cp}")
    if sp and (seq // cp) % tp:
        v.append(f"sequence length per CP rank {seq // cp} not divisible by TP={tp} (sequence parallel)")
    if m.seq_length != seq:
        v.append(f"model.seq_length {m.seq_length} != dataset.seq_length {seq}: set both")
    from gptoss.arch import VOCAB_SIZE

    if a.vocab_size != VOCAB_SIZE:
        v.append(f"model vocab {a.vocab_size} != o200k_harmony's {VOCAB_SIZE}: the tokenizer and model disagree")
    if getattr(cfg.tokenizer, "use_tokenizer_vocab_size", False):
        v.append("tokenizer.use_tokenizer_vocab_size=true would resize the vocabulary away from the checkpoint's")
    p.layout = {"tp": tp, "pp": pp, "vpp": vpp, "ep": ep, "etp": etp, "cp": cp, "dp": dp, "sp": sp}

    # ---- parameters per GPU -----------------------------------------------------------------
    layers_per_stage = max(a.num_layers // pp, 1)
    attn = a.attention_params_per_layer()
    replicated = a.norm_params_per_layer() + a.router_params_per_layer()
    dense_stage = layers_per_stage * (attn // tp + replicated)
    emb = a.embedding_params() // tp
    out = a.output_params() // tp
    dense_first = dense_stage + emb + (out if pp == 1 else 0)
    dense_last = dense_stage + out + (emb if pp == 1 else 0)
    dense_gpu = max(dense_first, dense_last)
    expert_gpu = layers_per_stage * a.expert_params_per_layer() // (ep * etp)
    p.params = {
        "total": a.total_params(),
        "active/token": a.active_params(),
        "per GPU (fullest stage)": dense_gpu + expert_gpu,
        "experts per GPU": expert_gpu,
    }

    # ---- memory ----------------------------------------------------------------------------
    fp32_model = getattr(m, "params_dtype", None) is not None and str(m.params_dtype) == "torch.float32"
    w_bytes = 4 if fp32_model else 2
    opt_bytes = 8 if fp32_model else 12
    distributed = bool(getattr(cfg.ddp, "use_distributed_optimizer", False))
    dense_shards = dp * cp if distributed else 1
    expert_dp = max(world // (pp * ep * etp), 1)
    expert_shards = expert_dp if distributed else 1
    weights = (dense_gpu + expert_gpu) * w_bytes
    peft = getattr(cfg, "peft", None)
    if peft is not None:
        lora = layers_per_stage * _lora_params_per_layer(a, peft.dim, list(peft.target_modules))
        lora = lora // max(tp, 1)
        grads = lora * 4
        optim = lora * opt_bytes / dense_shards
        weights += lora * w_bytes
        p.params["trainable (LoRA) per GPU"] = lora
    else:
        grads = (dense_gpu + expert_gpu) * 4
        optim = dense_gpu * opt_bytes / dense_shards + expert_gpu * opt_bytes / expert_shards

    tokens_mb = seq * mbs / cp
    h, q, kv, f, k, E = (
        a.hidden_size,
        a.q_width,
        a.kv_width,
        a.expert_ffn_hidden_size,
        a.experts_per_token,
        a.num_experts,
    )
    if sp:
        per_token = (5 * h + 2 * q + 2 * kv + 2 * E + k * (2 * h + 3 * f)) / tp
    else:
        per_token = 5 * h + (2 * q + 2 * kv) / tp + 2 * E + k * (2 * h + 3 * f)
    act_bytes = 2  # bf16 activations (fp32 models keep 4, but those are tiny CPU runs)
    if fp32_model:
        act_bytes = 4
    layer_act = tokens_mb * per_token * act_bytes
    num_microbatches = max(gbs // (mbs * dp), 1)
    in_flight = min(pp, num_microbatches)
    act_full = layers_per_stage * layer_act * in_flight
    checkpointed_input = tokens_mb * h * act_bytes / (tp if sp else 1)
    act_recompute = layers_per_stage * checkpointed_input * in_flight + layer_act
    logits = tokens_mb * a.vocab_size / tp * 6
    recompute = getattr(m, "recompute_granularity", None) == "full"
    act = act_recompute if recompute else act_full
    mem = {
        "weights": weights / GiB,
        "gradients (fp32 main grads)": grads / GiB,
        "optimizer states": optim / GiB,
        "activations, no recompute": act_full / GiB,
        "activations, full recompute": act_recompute / GiB,
        "logits + loss (last stage)": logits / GiB,
        "runtime overhead": RUNTIME_OVERHEAD_GIB,
    }
    total = (weights + grads + optim + act + logits) / GiB + RUNTIME_OVERHEAD_GIB
    mem[f"TOTAL ({'full recompute' if recompute else 'no recompute'})"] = total
    p.memory_gib = mem
    if total > p.gpu.memory_gib:
        hint = "" if recompute else "; try model.recompute_granularity=full"
        v.append(
            f"estimated {total:.1f} GiB per GPU exceeds the {p.gpu.name}'s {p.gpu.memory_gib} GiB: "
            f"raise PP/EP/TP, lower micro batch, or use more nodes{hint}"
        )

    # ---- throughput and budget -------------------------------------------------------------
    flops = a.train_flops_per_token(seq)
    tps = tokens_per_gpu_s if tokens_per_gpu_s else mfu * p.gpu.bf16_tflops * 1e12 / flops
    t = {
        "tokens_per_step": float(gbs * seq),
        "flops_per_token": flops,
        "tokens_per_gpu_s": tps,
        "mfu": tps * flops / (p.gpu.bf16_tflops * 1e12),
    }
    if tokens:
        t["tokens"] = tokens
        t["steps"] = math.ceil(tokens / (gbs * seq))
        t["wall_hours"] = tokens / (tps * world) / 3600
        t["gpu_hours"] = t["wall_hours"] * world
    p.throughput = t
    return p
