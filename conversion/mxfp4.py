"""MXFP4 codec for gpt-oss expert weights (the layout of the official release).

Format (OCP Microscaling, as in openai/gpt-oss and transformers' Mxfp4 integration):
- 32 consecutive values of the *input* dimension share one scale: an E8M0 byte, 2**(byte - 127).
- Each value is FP4 E2M1: sign bit (0x8) + 3-bit index into [0, .5, 1, 1.5, 2, 3, 4, 6].
- `*_blocks` is uint8 [..., G, 16]: two values per byte, the low nibble first; `*_scales` is uint8 [..., G].

HF layout differences (the classic source of silent bugs, so they live here and nowhere else):
the bf16 checkpoint stores expert weights as [E, in, out] (gate_up_proj [E, hidden, 2*ffn],
down_proj [E, ffn, hidden]); the MXFP4 tensors are [E, out, in/32, 16], i.e. transposed, with the
blocks running along `in`. Gate/up rows stay interleaved (even = gate, odd = up) in both.

Quantization rounds the scale *up* (scale = 2**ceil(log2(amax / 6))) so no value is clipped, then
rounds each scaled value to the nearest E2M1 value, ties to the even code. That is the rule of what
produces and serves MXFP4 on GPUs: triton_kernels' `_downcast_to_mxfp` (the gpt-oss kernels vLLM
runs; "Round to nearest, ties to even (RTNE)") and ModelOpt's CUDA fake quantization
(tensor_quant_mx.h `round_to_even`, scale by `compute_scale_e8m0_NV`), which QAT on GPU trains
with. ModelOpt's pure-torch `MXFP4QTensor.quantize` is the odd one out: it counts the bounds a
value strictly exceeds, so the ties 0.75, 1.75 and 3.5 round *down* (to 0.5, 1.5, 3); the kit
follows the kernels (tests/test_qat.py asserts each tie against all three). Both directions are
table lookups and elementwise ops in chunks (CPU speed matters: a 20b export quantizes 38 GB of
experts). Error bound per element: |x - q| <= scale (half the widest gap, 4..6, times the scale),
and q == x whenever x is representable.

QAT (`fake_quantize`, `fake_quantize_ste`) computes its grid with the same `_encode_rows` as the
export, from the bf16 value the export reads, so the MXFP4 export of a QAT run dequantizes to
exactly the weights the run trained with, and re-quantizing a grid value returns it unchanged.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

BLOCK = 32
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E8M0_BIAS = 127
# Rows (of BLOCK values) processed at once: bounds the temporaries to ~100 MB whatever the tensor.
_ROWS_PER_CHUNK = 1 << 18


def _lut(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    pos = torch.tensor(FP4_VALUES, dtype=torch.float32, device=device)
    return torch.cat([pos, -pos]).to(dtype)


@functools.cache
def _byte_luts(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(byte -> its two values, low nibble first: [256, 2]; E8M0 byte -> 2**(byte - 127): [256, 1])."""
    lut = _lut(torch.float32, device)
    pairs = torch.stack([lut.repeat(16), lut.repeat_interleave(16)], dim=1)
    scales = torch.ldexp(torch.ones(256, device=device), torch.arange(256, device=device) - E8M0_BIAS)
    return pairs.to(dtype), scales.to(dtype)[:, None]


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """[..., G, 16] uint8 blocks + [..., G] uint8 scales -> [..., G * 32] values (exact in bf16:
    an E2M1 value times a power of two has at most 2 mantissa bits)."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"MXFP4 blocks/scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    if blocks.shape[-1] != BLOCK // 2 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 shapes do not match: blocks {tuple(blocks.shape)}, scales {tuple(scales.shape)}")
    *prefix, groups, _ = blocks.shape
    pairs, powers = _byte_luts(dtype, blocks.device)
    flat_b = blocks.reshape(-1, BLOCK // 2)
    flat_s = scales.reshape(-1)
    out = torch.empty(flat_b.shape[0], BLOCK, dtype=dtype, device=blocks.device)
    for r0 in range(0, flat_b.shape[0], _ROWS_PER_CHUNK):
        r1 = r0 + _ROWS_PER_CHUNK
        # table lookups through embedding (the fastest gather on CPU, ~5x indexing two nibbles apart)
        values = F.embedding(flat_b[r0:r1].int(), pairs).view(-1, BLOCK)
        torch.mul(values, F.embedding(flat_s[r0:r1].int(), powers), out=out[r0:r1])
    return out.reshape(*prefix, groups * BLOCK)


def _encode_rows(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 rows [R, 32] (scaled in place: pass a copy) -> (E2M1 codes uint8 [R, 32] with the sign in
    0x8, scale exponents int [R]). The one statement of the rounding rule, shared by `quantize` (the
    export) and `fake_quantize` (training), so the two cannot disagree."""
    amax = r.abs().amax(dim=1)
    if not torch.isfinite(amax).all():  # a row's amax is NaN or inf exactly when the row holds one
        raise ValueError("MXFP4 quantization got a non-finite value")
    # smallest power of two with amax / 2**e <= 6; frexp gives amax/6 = m * 2**e2, m in [0.5, 1).
    # amax / 6 is an fp32 division rounded to nearest, as in ModelOpt's CUDA kernel
    # (compute_scale_e8m0_NV) and triton_kernels' downcast (max_val / 6.0, then + 0x007FFFFF).
    mant, exp = torch.frexp(amax / 6.0)
    e = torch.where(mant == 0.5, exp - 1, exp)  # exact powers of two need no rounding up
    e = torch.where(amax == 0, torch.full_like(e, -E8M0_BIAS), e).clamp(-E8M0_BIAS, 127)
    m = r.mul_(torch.ldexp(torch.ones_like(amax), -e)[:, None])  # value / scale: exact (a power of two)
    negative = m < 0
    m.abs_()
    # nearest E2M1 code, ties to even: the grid is 0.5-spaced on [0, 2) (codes 0-3), 1-spaced on
    # [2, 4) (codes 4-5), 2-spaced on [4, 6] (codes 6-7), and torch.round rounds half to even
    # (0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4: an even code each time)
    code = torch.where(
        m < 2, torch.round(m * 2), torch.where(m < 4, torch.round(m).add_(2), torch.round(m * 0.5).add_(4))
    ).to(torch.uint8)
    code |= (negative & (code > 0)).to(torch.uint8) << 3
    return code, e


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., N] float (N % 32 == 0) -> (blocks uint8 [..., N/32, 16], scales uint8 [..., N/32])."""
    if x.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the blocked dimension to be a multiple of {BLOCK}, got {x.shape[-1]}")
    *prefix, n = x.shape
    rows = x.reshape(-1, BLOCK)
    blocks = torch.empty(rows.shape[0], BLOCK // 2, dtype=torch.uint8, device=x.device)
    scales = torch.empty(rows.shape[0], dtype=torch.uint8, device=x.device)
    for r0 in range(0, rows.shape[0], _ROWS_PER_CHUNK):
        r1 = r0 + _ROWS_PER_CHUNK
        # scaled in place by _encode_rows: never the caller's tensor
        code, e = _encode_rows(rows[r0:r1].to(torch.float32, copy=True))
        blocks[r0:r1] = code[:, 0::2] | (code[:, 1::2] << 4)
        scales[r0:r1] = (e + E8M0_BIAS).to(torch.uint8)
    return blocks.reshape(*prefix, n // BLOCK, BLOCK // 2), scales.reshape(*prefix, n // BLOCK)


# ---- fake quantization (quantization-aware training) ------------------------------------------

# The precision the export reads a checkpoint's weights in (conversion.megatron_io casts every
# tensor to its source dtype, bf16 for training runs) and so the precision training quantizes:
# Q(bf16(w)) in both places. Quantizing fp32 masters directly could round differently: an fp32
# value just above a tie becomes the tie itself in bf16.
QUANTIZED_FROM = torch.bfloat16


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """[..., N] (N % 32 == 0) -> the values the MXFP4 export of `x` dequantizes to, in x's dtype and
    shape: dequantize(quantize(x.to(bf16))) bit for bit (the codes come from the same `_encode_rows`),
    without packing bytes. Blocks run along the last dimension: Megatron's [out, in] weights give
    blocks along the input, as the release stores them. No gradient (see `fake_quantize_ste`)."""
    if x.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the blocked dimension to be a multiple of {BLOCK}, got {x.shape[-1]}")
    with torch.no_grad():
        rows = x.detach().to(QUANTIZED_FROM).reshape(-1, BLOCK)
        out = torch.empty(rows.shape, dtype=torch.float32, device=x.device)
        lut = _lut(torch.float32, x.device)
        for r0 in range(0, rows.shape[0], _ROWS_PER_CHUNK):
            r1 = r0 + _ROWS_PER_CHUNK
            code, e = _encode_rows(rows[r0:r1].to(torch.float32))
            # E2M1 value x 2**e: exact in fp32 (and in bf16: at most 2 significant bits)
            torch.mul(lut[code.long()], torch.ldexp(torch.ones_like(e, dtype=torch.float32), e)[:, None], out=out[r0:r1])
        return out.reshape(x.shape).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: the MXFP4 grid; backward: the gradient unchanged (the straight-through estimator).
    Nothing to clip: the scale rounds up, so no value of a block lies outside its grid's range."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


def fake_quantize_ste(x: torch.Tensor) -> torch.Tensor:
    """`fake_quantize` with a straight-through gradient to `x` (what QAT trains through)."""
    return _StraightThrough.apply(x)


# ---- the training hook: Megatron's expert linears on the grid ---------------------------------

# Expert linears of Megatron's MoE layer: SequentialMLP (local spec, CPU) keeps one module per expert
# (experts.local_experts.<i>.linear_fc1), TEGroupedMLP one module holding weight0..weight<E-1>.
_EXPERT_LINEAR = re.compile(r"(^|\.)mlp\.experts\.(local_experts\.\d+\.)?linear_fc[12]$")
_WEIGHT = re.compile(r"^weight\d*$")


def expert_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, list[str]]]:
    """(module name, module, its weight parameter names) for every expert fc1/fc2 of `model` (a
    distillation teacher's, under `_teacher_model`, excluded: the teacher stays bf16)."""
    found = []
    for name, module in model.named_modules():
        if "_teacher_model" in name or not _EXPERT_LINEAR.search(name):
            continue
        weights = [n for n, p in module.named_parameters(recurse=False) if _WEIGHT.match(n) and p.dim() == 2]
        if weights:
            found.append((name, module, weights))
    return found


def _fake_quantizing_forward(module: torch.nn.Module, weights: list[str]):
    """`module.forward` with each weight seen as its MXFP4 grid value. The grid tensor shadows the
    parameter in the instance __dict__ for the call only (attribute lookup finds it before
    nn.Module's _parameters), so state_dict, the optimizer, DDP and checkpoints keep the parameter."""
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        for n in weights:
            module.__dict__[n] = fake_quantize_ste(module._parameters[n])
        try:
            return inner(*args, **kwargs)
        finally:
            for n in weights:
                module.__dict__.pop(n, None)

    forward.mxfp4_fake_quant = True  # type: ignore[attr-defined]
    return forward


def install_fake_quant(model_chunks: list) -> list:
    """Pre-wrap hook: fake-quantize every expert's fc1/fc2 weight in the forward (idempotent).
    Raises ValueError naming the module when a weight's input width is not a multiple of 32."""
    count = 0
    for chunk in model_chunks:
        for name, module, weights in expert_linears(chunk):
            if getattr(module.forward, "mxfp4_fake_quant", False):
                continue
            for n in weights:
                width = module._parameters[n].shape[-1]
                if width % BLOCK:
                    raise ValueError(
                        f"{name}.{n}: input width {width} is not a multiple of the MXFP4 block ({BLOCK}): "
                        "an expert tensor-parallel split cuts the blocks; use expert_tensor_parallel_size=1"
                    )
            module.forward = _fake_quantizing_forward(module, weights)
            count += 1
    has_experts = any(hasattr(m, "experts") for c in model_chunks for m in c.modules())
    if count == 0 and has_experts:
        raise ValueError("MXFP4 QAT found no expert linear_fc1/linear_fc2 to fake-quantize (another layer spec?)")
    return model_chunks


install_fake_quant.mxfp4_fake_quant = True  # type: ignore[attr-defined]


# A training run whose expert weights were fake-quantized (recipes/qat.py) leaves this file in its
# checkpoint directory; export and validate read it (its MXFP4 experts are what the run trained).
QAT_MARKER = "mxfp4_qat.json"


def mark_qat_run(checkpoint_dir: str | os.PathLike) -> None:
    """Record in a run's checkpoint directory that it trained MXFP4-fake-quantized experts."""
    from kit.fs import write_text_atomic

    info = {"format": "mxfp4", "weights": ["linear_fc1", "linear_fc2"], "block": BLOCK, "quantized_from": "bfloat16"}
    write_text_atomic(Path(checkpoint_dir) / QAT_MARKER, json.dumps(info, indent=2) + "\n")


def is_qat_run(checkpoint_dir: str | os.PathLike) -> bool:
    """Whether `checkpoint_dir` is a QAT run's (its experts trained on the MXFP4 grid)."""
    return (Path(checkpoint_dir) / QAT_MARKER).is_file()


# ---- HF expert tensors <-> MXFP4 --------------------------------------------------------------

EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")


def is_expert_weight(name: str) -> bool:
    """True for the expert weight names that the release stores in MXFP4 (not their biases)."""
    return name.endswith(tuple(f".mlp.experts.{w}" for w in EXPERT_WEIGHTS))


def expert_to_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16-layout expert weight [E, in, out] -> (blocks [E, out, in/32, 16], scales [E, out, in/32])."""
    if weight.ndim != 3:
        raise ValueError(f"expert weight must be [experts, in, out], got shape {tuple(weight.shape)}")
    return quantize(weight.transpose(1, 2))


def expert_from_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16, *, contiguous: bool = True
) -> torch.Tensor:
    """(blocks [E, out, G, 16], scales [E, out, G]) -> bf16-layout expert weight [E, in, out]
    (with contiguous=False, a transposed view of the [E, out, in] values: no copy)."""
    weight = dequantize(blocks, scales, dtype).transpose(1, 2)
    return weight.contiguous() if contiguous else weight


def quantization_config() -> dict:
    """The `quantization_config` of the official MXFP4 release (what vLLM and transformers read)."""
    return {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    }
