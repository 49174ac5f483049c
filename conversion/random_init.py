"""A random-weight gpt-oss HF checkpoint of the real architecture (tiny by default): what the
tests and `make demo` start from, since nothing may be downloaded here."""

from __future__ import annotations

from pathlib import Path

import torch

from conversion import mxfp4
from gptoss.arch import GptOssArch


def make_random_hf(path: str | Path, arch: GptOssArch, seed: int = 0, *, snap_experts_to_mxfp4: bool = False) -> Path:
    """Save a GptOssForCausalLM with random weights in every tensor, and the kit's tokenizer beside it.

    snap_experts_to_mxfp4 rounds expert weights to MXFP4-representable values, so that an MXFP4
    copy of the checkpoint is exactly its bf16 twin.
    """
    from transformers import AutoTokenizer, GptOssForCausalLM

    from gptoss.tokenizer import hf_tokenizer_dir

    path = Path(path)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(arch.hf_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05 if "norm" not in name else 1.0)
            if snap_experts_to_mxfp4 and name.endswith(("gate_up_proj", "down_proj")):
                p.copy_(mxfp4.expert_from_mxfp4(*mxfp4.expert_to_mxfp4(p.to(torch.bfloat16))).float())
    model.to(torch.bfloat16).save_pretrained(path)
    AutoTokenizer.from_pretrained(hf_tokenizer_dir()).save_pretrained(path)
    return path
