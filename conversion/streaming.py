"""HF <-> Megatron conversion tensor by tensor: neither checkpoint is ever whole in memory.

Building the Megatron model to convert (what AutoBridge does) needs the whole model in RAM: 84 GB
for gpt-oss-20b in fp32 on CPU, more than most hosts have beside a 13 GB source. Here:

- import writes the torch_dist checkpoint through Megatron-Bridge's own save path
  (`save_checkpoint` -> `dist_checkpointing.save`) for a model built on the *meta* device, so keys,
  global shapes, chunking, common state, run_config.yaml and tracker files are exactly the bridge's.
  The only change is where the data comes from: torch.distributed.checkpoint asks the planner for
  each chunk just before writing it (`LazyPlanner.resolve_data`), and the chunk is converted from
  the HF tensors then. Memory: one layer's tensor of one kind (20b experts: ~1 GB) at a time.
- export (and validate) read the checkpoint one layer at a time (`read_stored`: a DCP read of that
  layer's region of every stacked tensor), convert to HF names, and the caller writes safetensors
  shards as they fill (`ShardedWriter`).

Measured on a 20b-shaped checkpoint: bench/conversion_20b.md.

The HF <-> Megatron tensor mapping lives in `MAPPING` as plain functions (the bridge's mapping
objects need built modules). Tests check it against the bridge: a streamed import loads to the
same values as AutoBridge's, and a streamed export writes the same bytes.

The checkpoint is layout-free (torch_dist stores global tensors): it loads into any TP/PP/EP.
Checkpoints are stored in the source's dtype (bf16 for the releases), half the size of fp32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from conversion.hf_io import ConversionError, HFCheckpoint
from gptoss.arch import GptOssArch

LAYER_PREFIX = "decoder.layers."


# ---- the mapping -------------------------------------------------------------------------------


def _deinterleave(x: torch.Tensor) -> torch.Tensor:
    """HF's gate/up interleave along dim 1 (even = gate, odd = up) -> [gate | up] (one copy)."""
    return torch.cat([x[:, 0::2], x[:, 1::2]], dim=1)


def _interleave(x: torch.Tensor) -> torch.Tensor:
    """[gate | up] along dim 1 -> HF's interleave (even = gate, odd = up)."""
    half = x.shape[1] // 2
    out = torch.empty(x.shape, dtype=x.dtype)
    out[:, 0::2], out[:, 1::2] = x[:, :half], x[:, half:]
    return out


def _qkv_to_megatron(arch: GptOssArch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Megatron's fused QKV groups rows by KV head: [q heads of group g, k_g, v_g] for each g."""
    g, d, rest = arch.num_key_value_heads, arch.head_dim, q.shape[1:]
    parts = (q.reshape(g, -1, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest))
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def _qkv_to_hf(arch: GptOssArch, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    g, d, rest = arch.num_key_value_heads, arch.head_dim, qkv.shape[1:]
    grouped = qkv.reshape(g, -1, *rest)
    q, k, v = grouped.split([grouped.shape[1] - 2 * d, d, d], dim=1)
    return tuple(t.reshape(-1, *rest).contiguous() for t in (q, k, v))


@dataclass(frozen=True)
class Rule:
    """One Megatron tensor (per layer for decoder.layers.*) and the HF tensors it is made of."""

    hf: tuple[str, ...]  # HF names; "{i}" is the layer
    to_megatron: Callable[..., torch.Tensor]  # (arch, *hf tensors) -> Megatron tensor
    to_hf: Callable[..., tuple[torch.Tensor, ...]]  # (arch, Megatron tensor) -> HF tensors


def _same(arch: GptOssArch, t: torch.Tensor) -> torch.Tensor:
    return t


def _same_hf(arch: GptOssArch, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (t,)


def _copy(*hf: str) -> Rule:
    return Rule(hf, _same, _same_hf)


_L = "model.layers.{i}."
MAPPING: dict[str, Rule] = {
    "embedding.word_embeddings.weight": _copy("model.embed_tokens.weight"),
    "decoder.final_layernorm.weight": _copy("model.norm.weight"),
    "output_layer.weight": _copy("lm_head.weight"),
    LAYER_PREFIX + "self_attention.linear_qkv.layer_norm_weight": _copy(_L + "input_layernorm.weight"),
    LAYER_PREFIX + "self_attention.linear_qkv.weight": Rule(
        tuple(_L + f"self_attn.{p}_proj.weight" for p in "qkv"), _qkv_to_megatron, _qkv_to_hf
    ),
    LAYER_PREFIX + "self_attention.linear_qkv.bias": Rule(
        tuple(_L + f"self_attn.{p}_proj.bias" for p in "qkv"), _qkv_to_megatron, _qkv_to_hf
    ),
    LAYER_PREFIX + "self_attention.linear_proj.weight": _copy(_L + "self_attn.o_proj.weight"),
    LAYER_PREFIX + "self_attention.linear_proj.bias": _copy(_L + "self_attn.o_proj.bias"),
    LAYER_PREFIX + "self_attention.core_attention.softmax_offset": _copy(_L + "self_attn.sinks"),
    LAYER_PREFIX + "mlp.linear_fc1.layer_norm_weight": _copy(_L + "post_attention_layernorm.weight"),
    LAYER_PREFIX + "mlp.router.weight": _copy(_L + "mlp.router.weight"),
    LAYER_PREFIX + "mlp.router.bias": _copy(_L + "mlp.router.bias"),
    # experts, all of a layer at once: HF [E, in, out] with gate/up interleaved on `out`;
    # Megatron [E, out, in] with [gate | up] rows (SwiGLU's two halves). Transposes are views: an
    # MXFP4 source is dequantized in [E, out, in] order already, an MXFP4 export quantizes in it.
    LAYER_PREFIX + "mlp.experts.experts.linear_fc1.weight": Rule(
        (_L + "mlp.experts.gate_up_proj",),
        lambda arch, w: _deinterleave(w.transpose(1, 2)),
        lambda arch, w: (_interleave(w).transpose(1, 2),),
    ),
    LAYER_PREFIX + "mlp.experts.experts.linear_fc1.bias": Rule(
        (_L + "mlp.experts.gate_up_proj_bias",),
        lambda arch, b: _deinterleave(b),
        lambda arch, b: (_interleave(b),),
    ),
    LAYER_PREFIX + "mlp.experts.experts.linear_fc2.weight": Rule(
        (_L + "mlp.experts.down_proj",),
        lambda arch, w: w.transpose(1, 2).contiguous(),
        lambda arch, w: (w.transpose(1, 2),),
    ),
    LAYER_PREFIX + "mlp.experts.experts.linear_fc2.bias": _copy(_L + "mlp.experts.down_proj_bias"),
}


def _rule(key: str) -> Rule:
    try:
        return MAPPING[key]
    except KeyError:
        raise ConversionError(
            f"Megatron tensor {key!r} has no HF counterpart in conversion.streaming.MAPPING "
            "(a model built with another layer spec?); convert with --engine bridge"
        ) from None


# ---- import ------------------------------------------------------------------------------------


class _FromHF:
    """Computes any chunk of the Megatron checkpoint from the HF source, one (key, layer) at a time.

    torch.distributed.checkpoint asks for chunks in state-dict order (a key's layers in turn, an
    expert tensor's experts within a layer), so caching the last (key, layer) tensor computes each
    one once; other orders would only be slower.
    """

    def __init__(self, src: HFCheckpoint, progress: Any = None) -> None:
        self.src, self.progress = src, progress
        self._cached: tuple[tuple[str, int | None], torch.Tensor] | None = None

    def megatron_tensor(self, key: str, layer: int | None) -> torch.Tensor:
        if self._cached is not None and self._cached[0] == (key, layer):
            return self._cached[1]
        self._cached = None  # free the previous one before making the next
        rule = _rule(key)
        names = [n.format(i=layer) for n in rule.hf]
        tensor = rule.to_megatron(self.src.arch, *(self.src.get_dequantized(n, contiguous=False) for n in names))
        self._cached = ((key, layer), tensor)
        return tensor

    def __call__(self, key: str, offsets: torch.Size, sizes: torch.Size) -> torch.Tensor:
        if key.startswith(LAYER_PREFIX):
            if sizes[0] != 1:
                raise ConversionError(f"{key}: a chunk spans {sizes[0]} layers (expected one layer per chunk)")
            layer, offsets, sizes, out_shape = offsets[0], offsets[1:], sizes[1:], sizes
        else:
            layer, out_shape = None, sizes
        tensor = self.megatron_tensor(key, layer)
        if tensor.dim() != len(sizes):
            raise ConversionError(
                f"{key}: HF tensors give shape {list(tensor.shape)}, the checkpoint expects {list(sizes)}"
            )
        for dim, (start, size) in enumerate(zip(offsets, sizes)):
            tensor = tensor.narrow(dim, start, size)
        if self.progress is not None:
            self.progress.update(tensor.numel() * tensor.element_size())
        return tensor.reshape(out_shape)


def _lazy_strategy(resolve: Callable[[str, torch.Size, torch.Size], torch.Tensor]):
    """Megatron's torch_dist save strategy, with every tensor's data produced by `resolve` while
    torch.distributed.checkpoint writes (serially, one chunk at a time)."""
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        TorchDistSaveShardedStrategy,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint.planner import WriteItemType

    class LazyPlanner(MCoreSavePlanner):
        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:  # common state, extra_state objects
                return super().resolve_data(write_item)
            chunk = write_item.tensor_data.chunk
            data = resolve(write_item.index.fqn, chunk.offsets, chunk.sizes)
            if tuple(data.shape) != tuple(chunk.sizes):
                raise ConversionError(
                    f"{write_item.index.fqn}: chunk of shape {list(data.shape)}, expected {list(chunk.sizes)}"
                )
            return data.to(write_item.tensor_data.properties.dtype).contiguous()

    class LazySave(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir) -> None:
            state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(
                sharded_state_dict, self.keep_only_main_replica
            )
            pyt_state_dict = mcore_to_pyt_state_dict(state_dict, False)
            planner = LazyPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
            writer = dcp.FileSystemWriter(str(checkpoint_dir), thread_count=1, single_file_per_rank=True)
            dcp.save(pyt_state_dict, storage_writer=writer, planner=planner, no_dist=True)

    return LazySave("torch_dist", 1)


def meta_model(provider: Any, dtype: torch.dtype) -> Any:
    """The GPTModel of `provider` (TP=PP=EP=1) on the meta device: structure without memory."""
    from megatron_cpu import model as cpu

    with torch.device("meta"):
        model = cpu.build_model(provider)
    return model.to(dtype)


def storage_dtype(src: HFCheckpoint) -> torch.dtype:
    """bf16 when every stored float tensor of the source is bf16 (the releases), fp32 otherwise,
    so no source value is ever rounded."""
    return torch.bfloat16 if src.float_dtypes() <= {"BF16"} else torch.float32


def import_streamed(src: HFCheckpoint, provider: Any, out: Path, *, target: Path | None = None) -> None:
    """Write the Megatron checkpoint of `src` into the (empty) directory `out`, chunk by chunk
    (`target`: where `out` goes once complete, for messages)."""
    from megatron.bridge.training.checkpointing import save_checkpoint
    from megatron.bridge.training.config import CheckpointConfig, ConfigContainer, LoggerConfig
    from megatron.bridge.training.state import GlobalState
    from megatron.core.optimizer import OptimizerConfig
    from tqdm import tqdm

    from megatron_cpu import model as cpu

    model = meta_model(provider, storage_dtype(src))
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    state = GlobalState()
    # What Megatron-Bridge's save_megatron_model sets up: weights only, no optimizer, no RNG.
    state.cfg = ConfigContainer(
        model=model.config,
        train=None,
        optimizer=OptimizerConfig(use_distributed_optimizer=False),
        ddp=None,
        scheduler=None,
        dataset=None,
        logger=LoggerConfig(),
        tokenizer=None,
        checkpoint=CheckpointConfig(
            async_save=False, save=str(out), save_optim=False, save_rng=False, ckpt_format="torch_dist"
        ),
        dist=None,
    )
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    with tqdm(total=total, unit="B", unit_scale=True, desc="import", mininterval=5) as bar, cpu.on_cpu():
        try:
            save_checkpoint(
                state,
                [model],
                None,
                None,
                0,
                checkpointing_context={"save_strategy": _lazy_strategy(_FromHF(src, bar))},
            )
        except CheckpointException as err:  # DCP wraps what failed while writing (a full disk, a bad chunk)
            cause = str(err).strip().splitlines()[-1]  # the original error; DCP prepends its traceback
            raise ConversionError(
                f"{target or out}: writing the Megatron checkpoint from {src.path} failed: {cause}"
            ) from err


# ---- export ------------------------------------------------------------------------------------


def stored_tensors(iter_dir: Path) -> dict[str, Any]:
    """{key: (global shape, dtype)} of the model tensors stored in a torch_dist checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = FileSystemReader(str(iter_dir)).read_metadata()
    except Exception as err:  # noqa: BLE001 - a missing or truncated .metadata, whatever torch raises
        raise ConversionError(f"{iter_dir}: unreadable torch_dist metadata ({type(err).__name__}: {err})") from err
    return {
        key: (tuple(md.size), md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata) and key in MAPPING
    }


def read_stored(iter_dir: Path, keys: dict[str, Any], layer: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors `keys` of one layer (or the whole non-layer ones), read from the checkpoint.

    torch.distributed.checkpoint reads any region of a stored tensor; Megatron's own load cannot
    be asked for one layer of a stack in a single process, hence a planner that names the region.
    """
    import torch.distributed.checkpoint as dcp

    out = {}
    for key, (shape, dtype) in keys.items():
        out[key] = torch.empty(shape if layer is None else (1, *shape[1:]), dtype=dtype)
    planner = _region_planner()(out, layer)
    # DCP gets empty placeholders and the planner fills `out`. (Handing DCP the tensors, with a
    # planner class made per call, left one layer alive per call: export's RSS grew with depth.
    # Not meta placeholders either: DCP materializes those through the default process group.)
    placeholders = {key: torch.empty(0) for key in out}
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        dcp.load(placeholders, storage_reader=dcp.FileSystemReader(str(iter_dir)), planner=planner, no_dist=True)
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - a missing or truncated .distcp file
        where = "the non-layer tensors" if layer is None else f"layer {layer}"
        cause = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ConversionError(f"{iter_dir}: cannot read {where} (damaged or truncated file? {cause})") from err
    finally:
        planner.regions = None
    return {key: t if layer is None else t[0] for key, t in out.items()}


@functools.cache
def _region_planner() -> type:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class RegionPlanner(DefaultLoadPlanner):
        """Reads `regions[key]` (one layer of a stack, or whole tensors) into the given tensors."""

        def __init__(self, regions: dict[str, torch.Tensor], layer: int | None) -> None:
            super().__init__()
            self.regions, self.layer = regions, layer

        def create_local_plan(self) -> LoadPlan:
            items = []
            for key, tensor in self.regions.items():
                start = 0 if self.layer is None else self.layer
                offsets = (start,) + (0,) * (tensor.dim() - 1)
                region = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=tensor.size())
                items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [region])
            return LoadPlan(items)

        def resolve_tensor(self, read_item):
            tensor = self.regions[read_item.dest_index.fqn]
            for dim, (start, size) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
                tensor = tensor.narrow(dim, start, size)
            return tensor

    return RegionPlanner


def iter_hf_weights(iter_dir: Path, arch: GptOssArch) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor in the checkpoint's dtype) for every weight, reading one layer at a time."""
    keys = stored_tensors(iter_dir)
    missing = sorted(set(MAPPING) - set(keys))
    if missing:
        raise ConversionError(
            f"{iter_dir}: no tensor {missing[0]!r} (and {len(missing) - 1} more) in the checkpoint; "
            "if it was written by another layer spec, convert with --engine bridge (loads through the model)"
        )
    layer_keys = {k: v for k, v in keys.items() if k.startswith(LAYER_PREFIX)}
    for key, (shape, _) in layer_keys.items():
        if shape[0] != arch.num_layers:
            raise ConversionError(f"{iter_dir}: {key} holds {shape[0]} layers, config.json says {arch.num_layers}")
    other = {k: v for k, v in keys.items() if not k.startswith(LAYER_PREFIX)}
    from tqdm import tqdm

    for layer in tqdm([None, *range(arch.num_layers)], desc=f"reading {iter_dir.name}", unit="layer", mininterval=5):
        wanted = other if layer is None else layer_keys
        loaded = read_stored(iter_dir, wanted, layer)
        for key in wanted:
            rule = MAPPING[key]
            hf = rule.to_hf(arch, loaded.pop(key))
            for name, tensor in zip(rule.hf, hf):
                yield name.format(i=layer), tensor
