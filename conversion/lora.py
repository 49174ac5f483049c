"""LoRA runs: base weights + trained adapters -> one Megatron model, for export and generation.

A Megatron-Bridge PEFT run saves only the adapters (`*.adapter.linear_in/linear_out`); its
`run_config.yaml` names the base (`checkpoint.pretrained_checkpoint`, a directory written by
`conversion import` or by a training run) and the LoRA settings. `megatron_io.load_any` builds the
base, and `attach_adapters` wraps it with the same LoRA transform the run trained with and loads
the adapters. Exporting that model merges the adapters (the bridge's
`export_hf_weights(merge_adapter_weights=True)`); `save_adapter` writes the adapters alone as an HF
PEFT directory (`adapter_config.json` + `adapter_model.safetensors`) for `peft.PeftModel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conversion.hf_io import ConversionError
from kit.dist import is_rank0
from megatron_cpu.compat import import_bridge


def run_config(iter_dir: Path) -> dict[str, Any]:
    """The training run's config (megatron-bridge writes run_config.yaml beside every checkpoint),
    as plain data: the bridge dumps Python objects (sets, enums, dtypes) with custom YAML tags."""
    import yaml

    path = iter_dir / "run_config.yaml"
    if not path.is_file():
        return {}

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("", lambda loader, suffix, node: _plain(loader, node))
    return yaml.load(path.read_text(), Loader=_Loader) or {}


def _plain(loader: Any, node: Any) -> Any:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def peft_settings(iter_dir: Path) -> dict[str, Any] | None:
    """The LoRA constructor arguments a checkpoint was trained with, or None for full weights."""
    import dataclasses

    import_bridge()
    from megatron.bridge.peft.lora import LoRA

    peft = run_config(iter_dir).get("peft") or None
    if peft is None:
        return None
    if not str(peft.get("_target_", "")).endswith("peft.lora.LoRA"):
        raise ConversionError(f"{iter_dir}: PEFT method {peft.get('_target_')} is not supported (LoRA only)")
    fields = {f.name for f in dataclasses.fields(LoRA) if f.init}
    skip = ("params_to_save", "lora_dtype", "canonical_mapping")  # run state, not settings
    return {k: v for k, v in peft.items() if k in fields and k not in skip}


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


def attach_adapters(model: list, iter_dir: Path, settings: dict[str, Any]) -> tuple[Any, list]:
    """Wrap `model` (its base weights loaded) with the run's LoRA and load the adapters from
    `iter_dir`. Returns (lora, model). Collective."""
    import_bridge()
    from megatron.bridge.peft.lora import LoRA
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistLoadShardedStrategy

    from megatron_cpu import model as cpu

    lora = LoRA(**settings)
    with cpu.on_cpu():
        model = lora(model, training=False)
    # the run's checkpoint holds the adapters only: load exactly those tensors
    wanted = {k: v for k, v in model[0].sharded_state_dict().items() if ".adapter." in k and not k.endswith("_extra_state")}
    if not wanted:
        raise ConversionError(f"{iter_dir}: the run's LoRA targets {settings.get('target_modules')} match no module")
    try:
        state = dist_checkpointing.load(wanted, str(iter_dir), TorchDistLoadShardedStrategy(), strict="raise_unexpected")
    except Exception as err:  # noqa: BLE001 - name the checkpoint whatever dist_checkpointing raised
        raise ConversionError(f"{iter_dir}: cannot load the LoRA adapters: {err}") from err
    # the loaded dict also carries the checkpoint's common state (iteration, version): keep the adapters
    result = model[0].load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    missing = [k for k in result.missing_keys if ".adapter." in k]
    if missing or result.unexpected_keys:
        raise ConversionError(f"{iter_dir}: adapter mismatch: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return lora, model


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
    if not is_rank0():
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
    """Fold every adapter into its base weight in Megatron's own layout (W += alpha/dim * B @ A,
    gathering TP shards of the adapter over the group of its layer), then drop the wrappers.

    The bridge can merge while exporting, but for gpt-oss experts it adds B@A (Megatron's [out, in],
    gate and up concatenated) to the HF tensor (transposed, gate/up interleaved) and fails on the
    shapes. Merging here first leaves plain modules, which the bridge's tested full-weight mapping
    then exports. Returns the number of merged linears.
    """
    import torch
    from megatron.bridge.peft.lora_layers import LoRALinear
    from megatron.bridge.peft.lora_merge import LoRAMerge
    from megatron.bridge.peft.utils import is_expert_linear
    from megatron.core import parallel_state

    merged = 0
    for chunk in model:
        for name, module in list(chunk.named_modules()):
            if not isinstance(module, LoRALinear):
                continue
            base, ad = module.to_wrap, module.adapter
            group = (
                parallel_state.get_expert_tensor_parallel_group()
                if is_expert_linear(name)
                else parallel_state.get_tensor_model_parallel_group()
            )
            with torch.no_grad():
                base.weight.data = LoRAMerge().merge(
                    base.weight.data, ad.linear_out.weight.data, ad.linear_in.weight.data, ad.alpha, ad.dim, tp_group=group
                )
            parent_name, _, child = name.rpartition(".")
            setattr(chunk.get_submodule(parent_name) if parent_name else chunk, child, base)
            merged += 1
    return merged
