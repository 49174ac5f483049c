"""The one place that knows gpt-oss's architecture.

Every number about gpt-oss-20b / gpt-oss-120b lives here (taken from the public HF config.json
files); recipes, conversion, data prep and the planner read it, and the HF configs the kit needs
are generated from it rather than downloaded, so nothing needs the hub.

`tiny` is the same architecture shrunk for CPU tests: non-square widths (hidden 96 != q width 64,
expert FFN 64 != hidden) so that a transposed or swapped tensor cannot hide behind a square shape,
2 layers so both sliding and full attention appear, 4 experts with top-2, sinks and YaRN, and the
real 201,088-entry vocabulary so that every model in the kit speaks the real tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from gptoss.tokenizer import SPECIAL, VOCAB_SIZE  # noqa: F401 - VOCAB_SIZE re-exported: every variant's, tiny too

# Expert tensor parallelism must stay 1: the fused fc1 holds [gate; up], and neither Megatron-Bridge's
# gpt-oss mapping nor Megatron's expert split is GLU-aware under ETP (a split would mix gate and up).
EXPERT_TENSOR_PARALLEL = 1


@dataclass(frozen=True)
class GptOssArch:
    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_experts: int
    experts_per_token: int
    expert_ffn_hidden_size: int
    vocab_size: int = VOCAB_SIZE
    max_position_embeddings: int = 131_072
    initial_context_length: int = 4096
    sliding_window: int = 128
    rope_theta: float = 150_000.0
    yarn_factor: float = 32.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    rms_norm_eps: float = 1e-5
    router_aux_loss_coef: float = 0.9
    # HF hub id of the released weights (documentation and defaults only; never fetched in tests).
    hf_id: str | None = None

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def layer_types(self) -> list[str]:
        """Layer 0 is sliding, then alternating (HF `layer_types`)."""
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_layers)]

    @property
    def num_sliding_layers(self) -> int:
        return (self.num_layers + 1) // 2

    @property
    def num_full_layers(self) -> int:
        return self.num_layers // 2

    # ---- parameter counts (exact, as Megatron / HF count them) --------------------------------
    def attention_params_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.q_width, self.kv_width
        qkv = h * (q + 2 * kv) + (q + 2 * kv)  # weights + biases
        proj = q * h + h
        sinks = self.num_attention_heads
        return qkv + proj + sinks

    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden_size

    def router_params_per_layer(self) -> int:
        return self.hidden_size * self.num_experts + self.num_experts

    def params_per_expert(self) -> int:
        h, f = self.hidden_size, self.expert_ffn_hidden_size
        fc1 = h * 2 * f + 2 * f  # gate and up, with bias
        fc2 = f * h + h
        return fc1 + fc2

    def expert_params_per_layer(self) -> int:
        return self.num_experts * self.params_per_expert()

    def dense_params_per_layer(self) -> int:
        """Everything in a layer that is not an expert (replicated across expert parallelism)."""
        return self.attention_params_per_layer() + self.norm_params_per_layer() + self.router_params_per_layer()

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def output_params(self) -> int:
        """Untied LM head plus the final norm."""
        return self.vocab_size * self.hidden_size + self.hidden_size

    def total_params(self) -> int:
        per_layer = self.dense_params_per_layer() + self.expert_params_per_layer()
        return self.num_layers * per_layer + self.embedding_params() + self.output_params()

    def active_params(self) -> int:
        """Parameters a token goes through (top-k experts), counted as the model card does: the
        embedding lookup excluded, the LM head included (3.61B for 20b, 5.13B for 120b)."""
        per_layer = self.dense_params_per_layer() + self.experts_per_token * self.params_per_expert()
        return self.num_layers * per_layer + self.output_params()

    def active_matmul_params(self) -> int:
        """Weights of the matmuls one token goes through (no biases, norms, sinks or embedding lookup)."""
        h, q, kv, f = self.hidden_size, self.q_width, self.kv_width, self.expert_ffn_hidden_size
        per_layer = h * (q + 2 * kv) + q * h + h * self.num_experts + self.experts_per_token * (h * 2 * f + f * h)
        return self.num_layers * per_layer + self.vocab_size * h

    def train_flops_per_token(self, seq_length: int) -> float:
        """Model FLOPs per trained token (forward + backward): 6 x matmul params plus attention.

        Attention (QK^T and AV, x3 for training) sees on average seq/2 keys in a causal full layer
        and at most `sliding_window` keys in a sliding layer.
        """
        matmul = 6.0 * self.active_matmul_params()
        ctx_full = seq_length / 2
        ctx_sliding = min(self.sliding_window, seq_length / 2)
        attn = 12.0 * self.q_width * (self.num_full_layers * ctx_full + self.num_sliding_layers * ctx_sliding)
        return matmul + attn

    # ---- the HF config, generated ---------------------------------------------------------
    def hf_config_dict(self) -> dict[str, Any]:
        """The config.json of the HF checkpoint (transformers' GptOssConfig keys)."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "attention_bias": True,
            "attention_dropout": 0.0,
            # the release's ids (gptoss.tokenizer says why they stay); a research vocabulary too small
            # to hold them declares none (transformers refuses a padding index outside the embedding)
            "eos_token_id": _token_id("<|return|>", self.vocab_size),
            "pad_token_id": _token_id("<|endoftext|>", self.vocab_size),
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.expert_ffn_hidden_size,
            "layer_types": self.layer_types(),
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.experts_per_token,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "output_router_logits": False,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.yarn_beta_fast,
                "beta_slow": self.yarn_beta_slow,
                "factor": self.yarn_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    def hf_config(self):  # -> transformers.GptOssConfig (import kept lazy: transformers is slow)
        from transformers import GptOssConfig

        cfg = self.hf_config_dict()
        cfg.pop("architectures")
        cfg.pop("model_type")
        config = GptOssConfig(**cfg)
        config.architectures = ["GptOssForCausalLM"]
        return config

    def megatron_fields(self) -> dict[str, Any]:
        """Provider fields that megatron-bridge's gpt-oss bridge hard-codes for the released sizes
        (YaRN, window, clamp) whatever the HF config says: right for 20b/120b, wrong for any other
        config (tiny's original context is 128), so every provider the kit builds gets these."""
        return {
            "window_size": (self.sliding_window - 1, 0),
            "rotary_base": self.rope_theta,
            "yarn_rotary_scaling_factor": self.yarn_factor,
            "yarn_original_max_position_embeddings": self.initial_context_length,
            "yarn_beta_fast": self.yarn_beta_fast,
            "yarn_beta_slow": self.yarn_beta_slow,
            "activation_func_clamp_value": self.swiglu_limit,
            "layernorm_epsilon": self.rms_norm_eps,
        }

    def apply_to_provider(self, provider: Any) -> Any:
        """Set a Megatron model provider's architecture fields from this arch (megatron_fields, the
        unpadded vocabulary, ETP=1); returns the provider. The inverse is `from_provider`."""
        for name, value in self.megatron_fields().items():
            setattr(provider, name, value)
        provider.vocab_size = self.vocab_size  # the real 201,088: matches every gpt-oss checkpoint
        provider.expert_tensor_parallel_size = EXPERT_TENSOR_PARALLEL
        return provider

    @classmethod
    def from_provider(cls, provider: Any) -> GptOssArch:
        """The architecture of a (possibly overridden) Megatron model provider, matched to a named
        variant when it is one (the provider keeps no max_position_embeddings: the recipe sets
        seq_length, so a known variant's is taken when everything else matches)."""
        arch = cls(
            name="recipe",
            num_layers=provider.num_layers,
            hidden_size=provider.hidden_size,
            num_attention_heads=provider.num_attention_heads,
            num_key_value_heads=provider.num_query_groups,
            head_dim=provider.kv_channels,
            num_experts=provider.num_moe_experts,
            experts_per_token=provider.moe_router_topk,
            expert_ffn_hidden_size=provider.moe_ffn_hidden_size,
            vocab_size=provider.vocab_size,
            sliding_window=(provider.window_size[0] + 1) if provider.window_size else provider.seq_length,
            initial_context_length=provider.yarn_original_max_position_embeddings,
            rope_theta=provider.rotary_base,
            yarn_factor=provider.yarn_rotary_scaling_factor,
            yarn_beta_fast=provider.yarn_beta_fast,
            yarn_beta_slow=provider.yarn_beta_slow,
            swiglu_limit=provider.activation_func_clamp_value,
            rms_norm_eps=provider.layernorm_epsilon,
        )
        for known in ARCHS.values():
            same = replace(arch, name=known.name, hf_id=known.hf_id, max_position_embeddings=known.max_position_embeddings)
            if same == known:
                return known
        return arch_from_hf_config(arch.hf_config_dict())

    # ---- parallel layouts --------------------------------------------------------------------
    def layout_problems(self, *, tp: int = 1, pp: int = 1, ep: int = 1, etp: int = 1, vpp: int | None = None) -> list[str]:
        """What this architecture cannot be split into: heads and KV heads by TP, layers by PP (x VPP),
        experts by EP, ETP other than 1. The one statement of these rules: the planner adds the
        allocation's (world size, batch, sequence), conversion and inference the process count."""
        v = []
        if self.num_attention_heads % tp:
            v.append(f"attention heads {self.num_attention_heads} not divisible by TP={tp}")
        if self.num_key_value_heads % tp:
            v.append(f"KV heads (query groups) {self.num_key_value_heads} not divisible by TP={tp}")
        if vpp:
            if pp < 2:
                v.append(f"VPP={vpp} needs PP >= 2 (PP={pp})")
            if self.num_layers % (pp * vpp):
                v.append(f"layers {self.num_layers} not divisible by PP*VPP = {pp}*{vpp}")
        elif self.num_layers % pp:
            v.append(f"layers {self.num_layers} not divisible by PP={pp}")
        if self.num_experts % ep:
            v.append(f"experts {self.num_experts} not divisible by EP={ep}")
        if etp != EXPERT_TENSOR_PARALLEL:
            v.append(f"ETP={etp}: gpt-oss experts need expert_tensor_parallel_size=1 (no GLU-aware split under ETP)")
        return v

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GPT_OSS_20B = GptOssArch(
    name="20b",
    num_layers=24,
    hidden_size=2880,
    num_attention_heads=64,
    num_key_value_heads=8,
    head_dim=64,
    num_experts=32,
    experts_per_token=4,
    expert_ffn_hidden_size=2880,
    hf_id="openai/gpt-oss-20b",
)

GPT_OSS_120B = replace(GPT_OSS_20B, name="120b", num_layers=36, num_experts=128, hf_id="openai/gpt-oss-120b")

TINY = GptOssArch(
    name="tiny",
    num_layers=2,
    hidden_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=4,
    experts_per_token=2,
    expert_ffn_hidden_size=64,  # a multiple of 32, so a tiny MXFP4 checkpoint exists
    max_position_embeddings=4096,
    initial_context_length=128,
    sliding_window=8,
    yarn_factor=32.0,
)

# The tiny distillation teacher (recipes gpt_oss_tiny_distill_code): deeper, wider and with more
# experts than TINY, as 120b is to 20b; the same vocabulary and tokenizer, so logits line up.
TINY_TEACHER = replace(
    TINY, name="tiny-teacher", num_layers=4, hidden_size=128, num_attention_heads=8, num_experts=8, expert_ffn_hidden_size=96
)

ARCHS: dict[str, GptOssArch] = {a.name: a for a in (TINY, TINY_TEACHER, GPT_OSS_20B, GPT_OSS_120B)}


def _token_id(token: str, vocab_size: int) -> int | None:
    return SPECIAL[token] if SPECIAL[token] < vocab_size else None


def get_arch(name: str) -> GptOssArch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown gpt-oss size {name!r}; choose one of {sorted(ARCHS)}") from None


def arch_from_hf_config(config: dict[str, Any]) -> GptOssArch:
    """Match an HF config.json (as a dict) to a known variant, or build one with its numbers.

    Raises ValueError naming the field when the config is not gpt-oss.
    """
    if config.get("model_type") != "gpt_oss":
        raise ValueError(f"not a gpt-oss config: model_type={config.get('model_type')!r} (expected 'gpt_oss')")
    # transformers >= 5 writes `rope_parameters` (rope_theta inside) instead of rope_scaling + rope_theta
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    arch = GptOssArch(
        name="custom",
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config["num_key_value_heads"],
        head_dim=config.get("head_dim", config["hidden_size"] // config["num_attention_heads"]),
        num_experts=config["num_local_experts"],
        experts_per_token=config["num_experts_per_tok"],
        expert_ffn_hidden_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        max_position_embeddings=config["max_position_embeddings"],
        initial_context_length=config.get("initial_context_length", rope.get("original_max_position_embeddings", 4096)),
        sliding_window=config["sliding_window"],
        rope_theta=config.get("rope_theta", rope.get("rope_theta", 150_000.0)),
        yarn_factor=rope.get("factor", 32.0),
        yarn_beta_fast=rope.get("beta_fast", 32.0),
        yarn_beta_slow=rope.get("beta_slow", 1.0),
        swiglu_limit=config.get("swiglu_limit", 7.0),
        rms_norm_eps=config.get("rms_norm_eps", 1e-5),
        router_aux_loss_coef=config.get("router_aux_loss_coef", 0.9),
    )
    for known in ARCHS.values():
        if replace(known, name="custom", hf_id=None) == arch:
            return known
    return arch
