"""HF <-> Megatron distributed checkpoints (torch_dist): import, export, loading.

Two engines write the same checkpoints (tests compare them bit for bit):
- "stream" (default, conversion.streaming): one process, tensor by tensor, no model built; the
  memory of one layer whatever the model size.
- "bridge": Megatron-Bridge's AutoBridge builds the model (name mapping, QKV fusion, gate/up
  de-interleave, down_proj orientation, TP/PP/EP sharding) in the requested layout, under torchrun;
  it needs the whole model in memory. LoRA runs are merged in the model, so they export this way.
This module adds what both need: input checks with clear errors, CPU models (megatron_cpu.model), an
atomic output directory, the HF config + tokenizer + source dtypes stored beside the Megatron
checkpoint (so export needs nothing else), and a sharded, optionally MXFP4, HF writer.

Multi-rank (bridge engine): every function here is collective; run it under torchrun with world
size tp * pp * ep (x data parallel). Rank 0 creates and renames the output directory.

The directory layout of a Megatron checkpoint is conversion/megatron_dir.py's. This module is the
one reader of such checkpoints (`load_megatron`, `load_any` for full weights or a LoRA run with its
base), used by conversion, validation and inference.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from conversion import mxfp4
from conversion.hf_io import (
    ConversionError,
    HFCheckpoint,
    ShardedWriter,
)
from conversion.megatron_dir import ADAPTER_SUBDIR, HF_SUBDIR, META, CheckpointDirError, iteration_dir
from gptoss.arch import GptOssArch, arch_from_hf_config
from kit.dist import is_rank0
from kit.fs import staged_dir, write_text_atomic
from megatron_cpu import model as cpu

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def check_layout(arch: GptOssArch, tp: int, pp: int, ep: int) -> None:
    """Refuse a parallel layout the architecture cannot be split into (GptOssArch.layout_problems),
    or that the processes of this job do not fill, before building anything."""
    problems = arch.layout_problems(tp=tp, pp=pp, ep=ep)
    if dist.is_initialized() and dist.get_world_size() % (tp * pp * ep):
        problems.append(f"world size {dist.get_world_size()} is not a multiple of TP*PP*EP={tp * pp * ep}")
    if problems:
        raise ConversionError(f"gpt-oss {arch.name} cannot be split as TP={tp} PP={pp} EP={ep}: " + "; ".join(problems))


def bridge_and_provider(hf_config: dict, tp: int, pp: int, ep: int, hf_path: Path | None = None):
    """The bridge and the model provider for this config and layout (nothing built yet): the one
    place that sets a gpt-oss provider up (conversion and inference)."""
    from megatron_cpu.compat import import_bridge

    import_bridge()
    from megatron.bridge import AutoBridge

    if hf_path is not None:
        bridge = AutoBridge.from_hf_pretrained(str(hf_path))
    else:
        from transformers import GptOssConfig

        bridge = AutoBridge.from_hf_config(GptOssConfig.from_dict(_plain_config(hf_config)))
    provider = bridge.to_megatron_provider(load_weights=False)
    arch_from_hf_config(hf_config).apply_to_provider(provider)  # the bridge hard-codes the released sizes' values
    provider.tensor_model_parallel_size = tp
    provider.pipeline_model_parallel_size = pp
    provider.expert_model_parallel_size = ep
    provider.sequence_parallel = False
    provider.should_pad_vocab = False  # keep the checkpoint's 201,088 rows (the bridge pads on load otherwise)
    if not cpu.cuda_available():
        cpu.make_cpu_friendly(provider)
    return bridge, provider


def _bridge_and_model(hf_config: dict, tp: int, pp: int, ep: int, hf_path: Path | None = None):
    bridge, provider = bridge_and_provider(hf_config, tp, pp, ep, hf_path)
    return bridge, [cpu.build_model(provider)]


def _plain_config(hf_config: dict) -> dict:
    """The bf16 HF config (no quantization_config): what the Megatron side and bf16 exports carry."""
    return {k: v for k, v in hf_config.items() if k != "quantization_config"}


def _latest_iter_dir(megatron_dir: Path, iteration: int | None = None) -> Path:
    """The directory of `iteration` (default the latest) of a checkpoint, or a ConversionError naming it."""
    try:
        return iteration_dir(megatron_dir, iteration)
    except CheckpointDirError as err:
        raise ConversionError(str(err)) from None


# ---- import ------------------------------------------------------------------------------------


ENGINES = ("stream", "bridge")


def check_engine(engine: str) -> None:
    """`stream` (default) converts tensor by tensor in one process; `bridge` builds the model with
    AutoBridge, across ranks under torchrun (needs the whole model in memory)."""
    if engine not in ENGINES:
        raise ConversionError(f"--engine must be one of {ENGINES}, got {engine!r}")
    if engine == "stream" and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConversionError(
            "--engine stream converts in one process (no GPU, one layer in memory at a time) and the "
            "checkpoint loads into any TP/PP/EP: run it without torchrun, or pass --engine bridge"
        )


def import_hf(
    hf_path: str | os.PathLike, out: str | os.PathLike, *, tp=1, pp=1, ep=1, force=False, engine: str = "stream"
) -> Path:
    """HF checkpoint (bf16 or MXFP4 experts) -> Megatron torch_dist checkpoint in `out`.

    The checkpoint holds global tensors, so it loads into any layout; tp/pp/ep are checked against
    the architecture and, with engine="bridge", are the layout the model is built in.
    """
    check_engine(engine)
    src = HFCheckpoint(hf_path)
    check_layout(src.arch, tp, pp, ep)
    if engine == "stream":  # no GPU needed: the CPU code path on any host
        with cpu.forced_cpu():
            return _import(src, out, 1, 1, 1, force, engine)
    return _import(src, out, tp, pp, ep, force, engine)


def _import(src: HFCheckpoint, out: str | os.PathLike, tp: int, pp: int, ep: int, force: bool, engine: str) -> Path:
    cpu.init_process_groups(tp, pp, ep)
    bridge, provider = bridge_and_provider(src.config, tp, pp, ep, hf_path=src.path)
    model = None
    if engine == "bridge":
        model = [cpu.build_model(provider)]
        with cpu.on_cpu():  # TP scatters ask torch.cuda for the current device (no-op with a GPU)
            bridge.load_hf_weights(model)
    out = Path(out).absolute()
    with staged_dir(out, force=force, error=ConversionError) as tmp:
        if model is None:
            from conversion.streaming import import_streamed

            import_streamed(src, provider, tmp, target=out)
        else:
            from megatron.bridge.training.model_load_save import save_megatron_model

            with cpu.on_cpu():
                save_megatron_model(model, str(tmp), ckpt_format="torch_dist")
        if is_rank0():
            _write_sidecar(tmp, src, layout={"tp": tp, "pp": pp, "ep": ep, "engine": engine})
    return out


def _write_sidecar(tmp: Path, src: HFCheckpoint, layout: dict) -> None:
    from gptoss import tokenizer

    hf_dir = tmp / HF_SUBDIR
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(_plain_config(src.config), indent=2) + "\n")
    copied = False
    for name in _TOKENIZER_FILES + ("generation_config.json",):
        if (src.path / name).is_file():
            shutil.copy2(src.path / name, hf_dir / name)
            copied |= name == "tokenizer.json"
    if not copied:  # the kit's own o200k_harmony (same ids as the release)
        for f in Path(tokenizer.hf_tokenizer_dir()).iterdir():
            if f.name in _TOKENIZER_FILES:
                shutil.copy2(f, hf_dir / f.name)
    dtypes = {}
    for header in src.headers.values():
        for name, info in header.items():
            if name != "__metadata__" and not name.endswith(("_blocks", "_scales")):
                dtypes[name] = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}.get(info["dtype"], "bfloat16")
    meta = {
        "source": str(src.path),
        "source_format": "mxfp4" if src.is_mxfp4 else "bf16",
        "arch": src.arch.name,
        "layout_at_import": layout,
        "hf_dtypes": dtypes,
    }
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")


def write_training_sidecar(checkpoint_dir: str | os.PathLike, arch: GptOssArch, source: str = "training") -> None:
    """Make a training run's checkpoint directory exportable: the HF config and tokenizer of its
    architecture and the kit metadata, as `import_hf` writes them (idempotent, written atomically)."""
    from gptoss import tokenizer

    d = Path(checkpoint_dir)
    if (d / META).is_file():
        return
    tmp = Path(tempfile.mkdtemp(dir=d, prefix=".sidecar."))
    try:
        (tmp / "config.json").write_text(json.dumps(arch.hf_config_dict(), indent=2) + "\n")
        for f in Path(tokenizer.hf_tokenizer_dir()).iterdir():
            if f.name in _TOKENIZER_FILES:
                shutil.copy2(f, tmp / f.name)
        shutil.rmtree(d / HF_SUBDIR, ignore_errors=True)
        os.replace(tmp, d / HF_SUBDIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = {"source": source, "source_format": "bf16", "arch": arch.name, "hf_dtypes": {}}
    write_text_atomic(d / META, json.dumps(meta, indent=2) + "\n")


# ---- loading a Megatron checkpoint ------------------------------------------------------------


def read_sidecar(megatron_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(HF config dict, kit metadata) stored beside a checkpoint written by `import_hf`."""
    d = Path(megatron_dir)
    cfg, meta = d / HF_SUBDIR / "config.json", d / META
    for p in (cfg, meta):
        if not p.is_file():
            raise ConversionError(f"{p}: missing (was {d} written by `python -m conversion import`?)")
    config = json.loads(cfg.read_text())
    try:
        arch_from_hf_config(config)
    except (ValueError, KeyError) as err:
        raise ConversionError(f"{cfg}: {err}") from None
    return config, json.loads(meta.read_text())


def load_megatron(megatron_dir: str | os.PathLike, *, tp=1, pp=1, ep=1):
    """Build the model for this layout and load the checkpoint into it (re-sharding as needed).

    Returns (bridge, [model], hf_config, meta). Collective.
    """
    megatron_dir = Path(megatron_dir)
    return _load_full(megatron_dir, _latest_iter_dir(megatron_dir), tp, pp, ep, build_from_sidecar)


def build_from_sidecar(megatron_dir: Path, iter_dir: Path, tp: int, pp: int, ep: int):
    """The empty model of a checkpoint written by `import_hf` or a finished training run: its
    sidecar's config, conversion's provider. Returns (bridge, [model], hf_config, meta). Collective."""
    config, meta = read_sidecar(megatron_dir)
    check_layout(arch_from_hf_config(config), tp, pp, ep)
    cpu.init_process_groups(tp, pp, ep)
    bridge, model = _bridge_and_model(config, tp, pp, ep)
    return bridge, model, config, meta


# build(checkpoint dir, iteration dir, tp, pp, ep) -> (bridge, [model], hf_config, meta), model still empty
ModelBuilder = Callable[[Path, Path, int, int, int], tuple[Any, list, dict, dict]]


def _load_full(megatron_dir: Path, iter_dir: Path, tp: int, pp: int, ep: int, build: ModelBuilder):
    bridge, model, config, meta = build(megatron_dir, iter_dir, tp, pp, ep)
    load_weights(iter_dir, model, f"gpt-oss TP={tp} PP={pp} EP={ep}")
    return bridge, model, config, meta


def load_weights(iter_dir: Path, model: list, what: str = "this model") -> None:
    """Load a torch_dist checkpoint's weights into `model` (any layout: Megatron re-shards), strictly;
    a ConversionError naming the checkpoint otherwise. Collective."""
    from megatron.bridge.training.checkpointing import _load_model_weights_from_checkpoint

    try:
        _load_model_weights_from_checkpoint(str(iter_dir), model, strict=True)
    except Exception as err:  # noqa: BLE001 - dist_checkpointing raises many kinds; name the checkpoint
        raise ConversionError(f"{iter_dir}: cannot load into {what}: {err}") from err


class LoraBaseMissing(ConversionError):
    """A LoRA run whose base checkpoint is not there. `run` and `base` (None: its run_config.yaml
    records none) let a caller that can name the base another way say so (inference's --base)."""

    def __init__(self, run: Path, base: Path | None) -> None:
        self.run, self.base = run, base
        super().__init__(
            f"{run} is a LoRA run; its base checkpoint {base or '(not recorded in its run_config.yaml)'} does not "
            "exist: restore it, or re-import it with `python -m conversion import`"
        )


def load_any(
    megatron_dir: str | os.PathLike,
    *,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    iteration: int | None = None,
    base: str | os.PathLike | None = None,
    build: ModelBuilder = build_from_sidecar,
) -> tuple[Any, list, dict, dict, Any]:
    """A full-weight checkpoint, or a LoRA run (its base plus its adapters): the one place that
    knows how a LoRA run is loaded (conversion export, inference).

    `iteration` picks a saved iteration of `megatron_dir` (default the latest; a LoRA base loads its
    latest). `base` replaces the base the LoRA run's run_config.yaml records. `build` makes the
    empty model of a checkpoint (default `build_from_sidecar`; inference passes its own provider
    settings). Returns (bridge, [model], hf_config, meta, lora) with lora None for full weights and
    meta["lora"] = {"run", "base"} for a LoRA run; LoraBaseMissing when the base is not there. Collective.
    """
    from conversion import lora

    megatron_dir = Path(megatron_dir)
    iter_dir = _latest_iter_dir(megatron_dir, iteration)
    settings = lora.peft_settings(iter_dir)
    if settings is None:
        return (*_load_full(megatron_dir, iter_dir, tp, pp, ep, build), None)
    # the run trained adapters only: build its base, then attach them
    if base is None:
        base = (lora.run_config(iter_dir).get("checkpoint") or {}).get("pretrained_checkpoint")
    if not base or not Path(base).is_dir():
        raise LoraBaseMissing(megatron_dir, Path(base) if base else None)
    base = Path(base)
    bridge, model, config, meta = _load_full(base, _latest_iter_dir(base), tp, pp, ep, build)
    adapters, model = lora.attach_adapters(model, iter_dir, settings)
    return bridge, model, config, {**meta, "lora": {"run": str(megatron_dir), "base": str(base)}}, adapters


# ---- export ------------------------------------------------------------------------------------


def export_hf(
    megatron_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "bf16",
    tp=1,
    pp=1,
    ep=1,
    force=False,
    max_shard_bytes: int = 2 * 1024**3,
    engine: str = "stream",
) -> Path:
    """Megatron checkpoint -> HF safetensors (bf16 layout, or MXFP4 experts like the release).

    A LoRA run is merged in the model, so it always goes through the bridge (engine="bridge").
    """
    if dtype not in ("bf16", "mxfp4"):
        raise ConversionError(f"--dtype must be bf16 or mxfp4, got {dtype!r}")
    check_engine(engine)
    from conversion import lora

    megatron_dir = Path(megatron_dir)
    if dtype == "mxfp4":  # refuse before writing anything, not at the first expert
        arch = arch_from_hf_config(read_sidecar(megatron_dir)[0])
        if arch.hidden_size % mxfp4.BLOCK or arch.expert_ffn_hidden_size % mxfp4.BLOCK:
            raise ConversionError(
                f"--dtype mxfp4 needs hidden size ({arch.hidden_size}) and expert FFN size "
                f"({arch.expert_ffn_hidden_size}) to be multiples of {mxfp4.BLOCK}: export with --dtype bf16"
            )
    is_lora = lora.peft_settings(_latest_iter_dir(megatron_dir)) is not None
    if engine == "stream" and not is_lora:
        config, meta = read_sidecar(megatron_dir)
        check_layout(arch_from_hf_config(config), tp, pp, ep)
        weights = stream_hf_weights_from_disk(megatron_dir, config, meta)
        bridge = model = lora_cfg = None
    else:
        bridge, model, config, meta, lora_cfg = load_any(megatron_dir, tp=tp, pp=pp, ep=ep)
        weights = None
    hf_side = Path(meta["lora"]["base"]) if lora_cfg is not None else megatron_dir
    out = Path(out).absolute()
    with staged_dir(out, force=force, error=ConversionError) as tmp:
        if lora_cfg is not None:  # a LoRA run: the adapters alone, then the merged weights
            from conversion.lora import merge_into_base, save_adapter

            save_adapter(bridge, model, lora_cfg, tmp / ADAPTER_SUBDIR, base=str(hf_side / HF_SUBDIR))
            merge_into_base(model)
        if weights is None:
            weights = stream_hf_weights(bridge, model, meta)
        writer = ShardedWriter(tmp, max_shard_bytes) if is_rank0() else None
        for name, tensor in weights:
            if writer is None:
                continue  # every rank takes part in the gathers; rank 0 writes
            if dtype == "mxfp4" and mxfp4.is_expert_weight(name):
                blocks, scales = mxfp4.expert_to_mxfp4(tensor)
                writer.add(name + "_blocks", blocks)
                writer.add(name + "_scales", scales)
            else:
                writer.add(name, tensor)
        if writer is not None:
            writer.close()
            _write_hf_side(hf_side, tmp, config, dtype)
    return out


def _to_source_dtype(name: str, tensor: torch.Tensor, meta: dict) -> torch.Tensor:
    return tensor.to(_DTYPES.get(meta.get("hf_dtypes", {}).get(name, "bfloat16"), torch.bfloat16))


def stream_hf_weights(bridge, model, meta: dict):
    """(HF name, tensor in the source's dtype) for every weight of a built model, one at a time."""
    with cpu.on_cpu():  # TP gathers ask torch.cuda for the current device (no-op with a GPU)
        for name, tensor in bridge.export_hf_weights(model, cpu=True, show_progress=False):
            yield name, _to_source_dtype(name, tensor, meta)


def stream_hf_weights_from_disk(megatron_dir: str | os.PathLike, config: dict, meta: dict):
    """(HF name, tensor in the source's dtype) for every weight, read from the checkpoint one layer
    at a time (no model is built)."""
    from conversion.streaming import iter_hf_weights

    for name, tensor in iter_hf_weights(_latest_iter_dir(Path(megatron_dir)), arch_from_hf_config(config)):
        yield name, _to_source_dtype(name, tensor, meta)


def _write_hf_side(megatron_dir: Path, out: Path, config: dict, dtype: str) -> None:
    cfg = dict(config)
    if dtype == "mxfp4":
        cfg["quantization_config"] = mxfp4.quantization_config()
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in (megatron_dir / HF_SUBDIR).iterdir():
        if f.name != "config.json":
            shutil.copy2(f, out / f.name)


__all__ = [
    "ConversionError",
    "LoraBaseMissing",
    "build_from_sidecar",
    "check_layout",
    "export_hf",
    "import_hf",
    "load_any",
    "load_megatron",
]
