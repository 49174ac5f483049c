"""LoRA runs: base weights + trained adapters -> one Megatron model, for export and generation.

A Megatron-Bridge PEFT run saves only the adapters (`*.adapter.linear_in/linear_out`); its
`run_config.yaml` names the base (`checkpoint.pretrained_checkpoint`, a directory written by
`conversion import` or by a training run) and the LoRA settings. `load_lora_run` builds the base
with `megatron_io.load_megatron`, wraps it with the same LoRA transform the run trained with, and
loads the adapters. Exporting that model merges the adapters (the bridge's
`export_hf_weights(merge_adapter_weights=True)`); `save_adapter` writes the adapters alone as an HF
PEFT directory (`adapter_config.json` + `adapter_model.safetensors`) for `peft.PeftModel`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from conversion.hf_io import ConversionError

# LoRA fields of run_config.yaml that the LoRA constructor takes (the rest is bookkeeping)
_LORA_FIELDS = ("target_modules", "exclude_modules", "dim", "alpha", "dropout", "dropout_position")


def run_config(iter_dir: Path) -> dict[str, Any]:
    from megatron.bridge.training.utils.checkpoint_utils import read_run_config

    path = iter_dir / "run_config.yaml"
    return read_run_config(str(path)) if path.is_file() else {}


def peft_settings(iter_dir: Path) -> dict[str, Any] | None:
    """The LoRA settings a checkpoint was trained with, or None for a full-weight checkpoint."""
    peft = run_config(iter_dir).get("peft") or None
    if peft is None:
        return None
    if "LoRA" not in str(peft.get("_target_", "")):
        raise ConversionError(f"{iter_dir}: PEFT method {peft.get('_target_')} is not supported (LoRA only)")
    return {k: peft[k] for k in _LORA_FIELDS if k in peft}


def base_of(iter_dir: Path) -> Path:
    base = (run_config(iter_dir).get("checkpoint") or {}).get("pretrained_checkpoint")
    if not base:
        raise ConversionError(f"{iter_dir}/run_config.yaml names no checkpoint.pretrained_checkpoint (the LoRA base)")
    if not Path(base).exists():
        raise ConversionError(
            f"the LoRA base {base} (from {iter_dir}/run_config.yaml) does not exist: restore it or re-import it "
            "with `python -m conversion import`"
        )
    return Path(base)


def load_lora_run(run_dir: str | os.PathLike, iter_dir: Path, settings: dict[str, Any], *, tp=1, pp=1, ep=1):
    """(bridge, [model with adapters loaded], hf_config, meta, lora). Collective."""
    from megatron.bridge.peft.lora import LoRA
    from megatron.bridge.training.checkpointing import (
        _generate_model_state_dict,
        apply_peft_adapter_filter_to_state_dict,
    )
    from megatron.core import dist_checkpointing

    from conversion.megatron_io import load_megatron

    bridge, model, config, meta = load_megatron(base_of(iter_dir), tp=tp, pp=pp, ep=ep)
    lora = LoRA(**settings)
    model = lora(model, training=False)
    # only the adapters come from the run's checkpoint: the base is already in place
    state = apply_peft_adapter_filter_to_state_dict(_generate_model_state_dict(model, {}), lora)
    try:
        loaded = dist_checkpointing.load(state, str(iter_dir))
    except Exception as err:  # noqa: BLE001 - name the checkpoint whatever dist_checkpointing raised
        raise ConversionError(f"{iter_dir}: cannot load the LoRA adapters: {err}") from err
    key = "model" if "model" in loaded else next(k for k in loaded if k.startswith("model"))
    missing, _ = model[0].load_state_dict(loaded[key], strict=False)
    if not any(".adapter." in k for k in loaded[key]):
        raise ConversionError(f"{iter_dir}: no adapter weights found (was this a LoRA run?)")
    adapters_missing = [k for k in missing if ".adapter." in k]
    if adapters_missing:
        raise ConversionError(f"{iter_dir}: adapters missing from the checkpoint, e.g. {adapters_missing[:3]}")
    meta = {**meta, "lora": {"run": str(run_dir), "base": str(base_of(iter_dir)), **settings}}
    return bridge, model, config, meta, lora


def save_adapter(bridge: Any, model: list, lora: Any, out: Path, base: str) -> None:
    """The adapters alone, as an HF PEFT directory loadable with PeftModel.from_pretrained(base, out).

    Attention adapters go through the bridge (q/k/v split out of the fused linear_qkv adapter).
    Expert adapters do not: megatron-bridge 0.6.2 writes one expert's adapter per layer under
    `mlp.experts.gate_up_proj` as if it were a Linear module, which PEFT silently ignores (HF's
    GptOssExperts holds 3-D parameters). They are written here instead as PEFT `target_parameters`
    (LoRA on the [experts, in, out] parameters), with gate/up interleaved as HF stores them.
    """
    import json

    from safetensors.torch import load_file, save_file

    bridge.save_hf_adapter(model, out, peft_config=lora, base_model_name_or_path=base, show_progress=False)
    if dist_rank() != 0:
        return
    experts = _expert_adapters(model)
    if not experts:
        return
    weights_path, config_path = out / "adapter_model.safetensors", out / "adapter_config.json"
    state = {k: v for k, v in load_file(weights_path).items() if ".mlp.experts." not in k}
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(set(config["target_modules"]) - {"gate_up_proj", "down_proj"})
    params = [p for p in ("gate_up_proj", "down_proj") if any(p in e for e in experts.values())]
    config["target_parameters"] = [f"mlp.experts.{p}" for p in params]
    for layer, per_param in experts.items():
        for i, param in enumerate(params):
            # PEFT nests one wrapper per targeted parameter; the first one listed is the innermost
            prefix = f"base_model.model.model.layers.{layer}.mlp.experts." + "base_layer." * (len(params) - 1 - i)
            a, b = per_param[param]
            state[prefix + "lora_A.weight"] = a.contiguous()
            state[prefix + "lora_B.weight"] = b.contiguous()
    save_file(state, str(weights_path))
    config_path.write_text(json.dumps(config, indent=2))


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _expert_adapters(model: list) -> dict[int, dict[str, tuple]]:
    """{layer: {"gate_up_proj"|"down_proj": (lora_A [E*r, in], lora_B [out, r*E])}} in PEFT's layout.

    Megatron expert e (SequentialMLP, one LoRA per expert): delta = s * B_e @ A_e as [out, in], fc1's
    rows [gate; up]. HF holds gate_up_proj as [E, hidden, 2*ffn] with gate/up columns interleaved
    and down_proj as [E, ffn, hidden]; PEFT's ParamWrapper applies delta[e] = (B[:, :, e] @ A[e]).T
    with A = lora_A viewed [E, r, in] and B = lora_B viewed [out, r, E]. So A[e] = A_e, and B[:, :, e]
    = B_e with fc1's rows interleaved.
    """
    import torch
    from megatron.bridge.peft.lora_layers import LoRALinear
    from megatron.core import parallel_state as ps

    found: dict[int, dict[str, tuple]] = {}
    chunk = model[0]
    for layer_idx, layer in enumerate(chunk.decoder.layers):
        local = getattr(getattr(layer.mlp, "experts", None), "local_experts", None)
        if local is None:
            continue
        for fc, param in (("linear_fc1", "gate_up_proj"), ("linear_fc2", "down_proj")):
            wrappers = [getattr(e, fc) for e in local]
            if not all(isinstance(w, LoRALinear) for w in wrappers):
                continue
            if ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size() > 1 or (
                ps.get_expert_model_parallel_world_size() > 1
            ):
                raise ConversionError("the PEFT export of expert adapters needs --tp 1 --pp 1 --ep 1 (one process)")
            a = torch.cat([w.adapter.linear_in.weight.detach().float() for w in wrappers], 0)
            bs = []
            for w in wrappers:
                b = w.adapter.linear_out.weight.detach().float()
                if param == "gate_up_proj":  # [gate; up] rows -> gate0, up0, gate1, up1, ...
                    half = b.shape[0] // 2
                    b = torch.stack([b[:half], b[half:]], 1).reshape(b.shape)
                bs.append(b)
            found.setdefault(layer_idx, {})[param] = (a, torch.stack(bs, -1).reshape(bs[0].shape[0], -1))
    return found


def merge_into_base(model: list) -> int:
    """Fold every adapter into its base weight in Megatron's own layout, then drop the wrappers.

    The bridge can merge while exporting, but for gpt-oss experts it adds B@A (Megatron's [out, in],
    gate and up concatenated) to the HF tensor (transposed, gate/up interleaved) and fails on the
    shapes. Merging here first leaves plain modules, which the bridge's tested full-weight mapping
    then exports. LoRALinear.weight is the merged weight (gathering TP shards of the adapter).
    Returns the number of merged modules.
    """
    import torch
    from megatron.bridge.peft.lora_layers import LoRALinear

    merged = 0
    for chunk in model:
        wrappers = [(name, m) for name, m in chunk.named_modules() if isinstance(m, LoRALinear)]
        for name, wrapper in wrappers:
            with torch.no_grad():
                wrapper.to_wrap.weight.copy_(wrapper.weight)
            parent_name, _, attr = name.rpartition(".")
            setattr(chunk.get_submodule(parent_name) if parent_name else chunk, attr, wrapper.to_wrap)
            merged += 1
    return merged
