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


def make_random_hf_streamed(
    path: str | Path,
    arch: GptOssArch,
    seed: int = 0,
    *,
    mxfp4_experts: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
) -> Path:
    """The same checkpoint layout written tensor by tensor, for 20b/120b shapes on a small host
    (`make_random_hf` builds the whole transformers model first: 84 GB for 20b).

    With `mxfp4_experts` the experts are stored like the official release (random E2M1 codes,
    scales 2**-9 .. 2**-5) with its quantization_config; everything else is bf16.
    """
    import json
    import shutil

    from tqdm import tqdm

    from conversion.hf_io import ShardedWriter, expected_shapes
    from gptoss.tokenizer import hf_tokenizer_dir

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    writer = ShardedWriter(path, max_shard_bytes)
    for name, shape in tqdm(expected_shapes(arch, mxfp4_experts).items(), desc="random weights", disable=None):
        if name.endswith("_blocks"):
            t = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        elif name.endswith("_scales"):
            t = torch.randint(mxfp4.E8M0_BIAS - 9, mxfp4.E8M0_BIAS - 4, shape, dtype=torch.uint8, generator=g)
        else:
            std = 1.0 if "norm" in name else 0.05
            t = torch.randn(shape, generator=g).mul_(std).to(torch.bfloat16)
        writer.add(name, t)
    writer.close()
    config = dict(arch.hf_config_dict(), torch_dtype="bfloat16")
    if mxfp4_experts:
        config["quantization_config"] = mxfp4.quantization_config()
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in Path(hf_tokenizer_dir()).glob("tokenizer*.json"):
        shutil.copy2(f, path / f.name)
    return path
