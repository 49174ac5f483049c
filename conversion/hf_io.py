"""HF checkpoints on disk: checked reading, streamed sharded writing, atomic output directories.

Reading never loads a whole checkpoint: `HFCheckpoint.get` opens one tensor at a time through
safetensors' lazy `safe_open` (memory-mapped), and `dequantized` yields the bf16-layout view of an
MXFP4 checkpoint one tensor at a time. Every problem is reported as `ConversionError` naming the
file and the tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conversion import mxfp4
from gptoss.arch import GptOssArch, arch_from_hf_config

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1, "F64": 8, "I32": 4, "I64": 8, "BOOL": 1}


class ConversionError(RuntimeError):
    """A checkpoint that cannot be converted, with the file and tensor at fault in the message."""


# ---- expected tensors --------------------------------------------------------------------------


def expected_shapes(arch: GptOssArch, mxfp4_experts: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF checkpoint for `arch`, with its shape (bf16 or MXFP4 expert layout)."""
    h, q, kv, f, e = arch.hidden_size, arch.q_width, arch.kv_width, arch.expert_ffn_hidden_size, arch.num_experts
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (arch.vocab_size, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (arch.vocab_size, h),
    }
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.o_proj.bias": (h,),
            p + "self_attn.sinks": (arch.num_attention_heads,),
            p + "mlp.router.weight": (e, h),
            p + "mlp.router.bias": (e,),
            p + "mlp.experts.gate_up_proj_bias": (e, 2 * f),
            p + "mlp.experts.down_proj_bias": (e, h),
        }
        if mxfp4_experts:
            shapes |= {
                p + "mlp.experts.gate_up_proj_blocks": (e, 2 * f, h // mxfp4.BLOCK, mxfp4.BLOCK // 2),
                p + "mlp.experts.gate_up_proj_scales": (e, 2 * f, h // mxfp4.BLOCK),
                p + "mlp.experts.down_proj_blocks": (e, h, f // mxfp4.BLOCK, mxfp4.BLOCK // 2),
                p + "mlp.experts.down_proj_scales": (e, h, f // mxfp4.BLOCK),
            }
        else:
            shapes |= {p + "mlp.experts.gate_up_proj": (e, h, 2 * f), p + "mlp.experts.down_proj": (e, f, h)}
    return shapes




# ---- reading -----------------------------------------------------------------------------------


def _read_header(path: Path) -> dict:
    """The safetensors JSON header, after checking that the file holds every byte it promises."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ConversionError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(fh.read(n))
        except json.JSONDecodeError as err:
            raise ConversionError(f"{path}: corrupt safetensors header ({err})") from None
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > data:
            raise ConversionError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end} of the data, "
                f"the file holds {data}"
            )
        numel = 1
        for d in info["shape"]:
            numel *= d
        if info["dtype"] in _DTYPE_BYTES and end - start != numel * _DTYPE_BYTES[info["dtype"]]:
            raise ConversionError(f"{path}: tensor {name!r} has {end - start} bytes for shape {info['shape']}")
    return header


class HFCheckpoint:
    """A local HF gpt-oss checkpoint directory, checked on open (files, config, names, shapes)."""

    def __init__(self, path: str | os.PathLike, *, check_shapes: bool = True) -> None:
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise ConversionError(f"{cfg_path}: missing (not an HF checkpoint directory)")
        self.config: dict = json.loads(cfg_path.read_text())
        try:
            self.arch = arch_from_hf_config(self.config)
        except (ValueError, KeyError) as err:
            raise ConversionError(f"{cfg_path}: {err}") from None
        self.weight_map = self._weight_map()
        self.headers: dict[str, dict] = {}
        for fname in sorted(set(self.weight_map.values())):
            fpath = self.path / fname
            if not fpath.is_file():
                missing = sorted(k for k, v in self.weight_map.items() if v == fname)
                raise ConversionError(f"{fpath}: missing shard (holds {len(missing)} tensors, e.g. {missing[0]!r})")
            self.headers[fname] = _read_header(fpath)
        for name, fname in self.weight_map.items():
            if name not in self.headers[fname]:
                raise ConversionError(f"{self.path / fname}: tensor {name!r} listed in {INDEX} is not in the file")
        quant = (self.config.get("quantization_config") or {}).get("quant_method")
        self.is_mxfp4 = any(k.endswith("_blocks") for k in self.weight_map)
        if self.is_mxfp4 and quant != "mxfp4":
            raise ConversionError(f"{cfg_path}: *_blocks tensors present but quantization_config is {quant!r}")
        if check_shapes:
            self.check_shapes()

    def _weight_map(self) -> dict[str, str]:
        index = self.path / INDEX
        if index.is_file():
            return dict(json.loads(index.read_text())["weight_map"])
        single = self.path / SINGLE
        if single.is_file():
            return {k: SINGLE for k in _read_header(single) if k != "__metadata__"}
        raise ConversionError(f"{self.path}: no {INDEX} and no {SINGLE}")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.headers[self.weight_map[name]][name]["shape"])

    def check_shapes(self) -> None:
        expected = expected_shapes(self.arch, self.is_mxfp4)
        missing = sorted(set(expected) - set(self.weight_map))
        if missing:
            raise ConversionError(f"{self.path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        unexpected = sorted(set(self.weight_map) - set(expected))
        if unexpected:
            raise ConversionError(f"{self.path}: tensors not in gpt-oss {self.arch.name}: {unexpected[:5]}")
        for name, shape in expected.items():
            if self.shape(name) != shape:
                raise ConversionError(
                    f"{self.path / self.weight_map[name]}: tensor {name!r} has shape {list(self.shape(name))}, "
                    f"the architecture in config.json needs {list(shape)}"
                )

    def get(self, name: str) -> torch.Tensor:
        """One stored tensor, as stored."""
        fname = self.weight_map.get(name)
        if fname is None:
            raise ConversionError(f"{self.path}: no tensor {name!r}")
        with safe_open(self.path / fname, framework="pt") as fh:
            return fh.get_tensor(name)

    def dequantized_names(self) -> list[str]:
        """Tensor names of the bf16 layout (MXFP4 pairs replaced by the expert weight name)."""
        names = []
        for name in self.weight_map:
            if name.endswith("_scales"):
                continue
            names.append(name.removesuffix("_blocks"))
        return names

    def get_dequantized(self, name: str, *, contiguous: bool = True) -> torch.Tensor:
        """A tensor in the bf16 checkpoint's layout (MXFP4 experts dequantized, [E, in, out]; with
        contiguous=False that is a transposed view of the MXFP4 [E, out, in] order)."""
        if name in self.weight_map:
            return self.get(name)
        if mxfp4.is_expert_weight(name) and name + "_blocks" in self.weight_map:
            blocks, scales = self.get(name + "_blocks"), self.get(name + "_scales")
            return mxfp4.expert_from_mxfp4(blocks, scales, contiguous=contiguous)
        raise ConversionError(f"{self.path}: no tensor {name!r} (nor its MXFP4 blocks/scales)")

    def dequantized(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.dequantized_names():
            yield name, self.get_dequantized(name)

    def float_dtypes(self) -> set[str]:
        """The safetensors dtypes of the stored tensors, MXFP4 blocks and scales (U8) left out."""
        return {i["dtype"] for h in self.headers.values() for n, i in h.items() if n != "__metadata__"} - {"U8"}

    def nbytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in self.headers)


# ---- writing -----------------------------------------------------------------------------------


class ShardedWriter:
    """Writes tensors to numbered safetensors shards of at most `max_shard_bytes`, plus the index.

    Holds at most one shard in memory: the bf16 export never has the whole model in RAM.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int = 2 * 1024**3) -> None:
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[dict[str, torch.Tensor] | list[str]] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.weight_map or name in self.pending:
            raise ConversionError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self.pending[name] = tensor.detach().cpu().contiguous()
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        idx = len(self.shards) + 1
        fname = f"model-{idx:05d}.safetensors"  # renamed to -of-N in close(), when N is known
        save_file(self.pending, str(self.out_dir / fname), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        for name in self.pending:
            self.weight_map[name] = fname
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> dict[str, str]:
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        renames = {f"model-{i:05d}.safetensors": f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}
        for old, new in renames.items():
            os.replace(self.out_dir / old, self.out_dir / new)
        self.weight_map = {k: renames[v] for k, v in self.weight_map.items()}
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return self.weight_map
