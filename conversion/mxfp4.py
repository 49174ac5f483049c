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
rounds each scaled value to the nearest E2M1 value, ties to the even code (as triton_kernels'
downcast does). Both directions are table lookups and elementwise ops in chunks (CPU speed matters:
a 20b export quantizes 38 GB of experts). Error bound per element: |x - q| <= scale (half the widest gap, 4..6, times the
scale), and q == x whenever x is representable.
"""

from __future__ import annotations

import functools

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
        r = rows[r0:r1].to(torch.float32, copy=True)  # scaled in place below: never the caller's tensor
        amax = r.abs().amax(dim=1)
        if not torch.isfinite(amax).all():  # a row's amax is NaN or inf exactly when the row holds one
            raise ValueError("MXFP4 quantization got a non-finite value")
        # smallest power of two with amax / 2**e <= 6; frexp gives amax/6 = m * 2**e2, m in [0.5, 1)
        mant, exp = torch.frexp(amax / 6.0)
        e = torch.where(mant == 0.5, exp - 1, exp)  # exact powers of two need no rounding up
        e = torch.where(amax == 0, torch.full_like(e, -E8M0_BIAS), e).clamp(-E8M0_BIAS, 127)
        m = r.mul_(torch.ldexp(torch.ones_like(amax), -e)[:, None])  # value / scale: exact (a power of two)
        negative = m < 0
        m.abs_()
        # nearest E2M1 code, ties to even: the grid is 0.5-spaced on [0, 2) (codes 0-3), 1-spaced on
        # [2, 4) (codes 4-5), 2-spaced on [4, 6] (codes 6-7), and torch.round rounds half to even
        code = torch.where(
            m < 2, torch.round(m * 2), torch.where(m < 4, torch.round(m).add_(2), torch.round(m * 0.5).add_(4))
        ).to(torch.uint8)
        code |= (negative & (code > 0)).to(torch.uint8) << 3
        blocks[r0:r1] = code[:, 0::2] | (code[:, 1::2] << 4)
        scales[r0:r1] = (e + E8M0_BIAS).to(torch.uint8)
    return blocks.reshape(*prefix, n // BLOCK, BLOCK // 2), scales.reshape(*prefix, n // BLOCK)


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
