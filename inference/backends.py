"""Two ways to run a gpt-oss checkpoint, one interface (`inference.sampling.Backend`):

- `HFBackend`: transformers' GptOssForCausalLM from an HF directory (bf16, or MXFP4 experts
  dequantized by the kit's codec as conversion.validate does), eager attention (the implementation
  with sinks; transformers has no SDPA path for gpt-oss), a KV cache, left padding for batches.
- `MegatronBackend`: the Megatron model of a checkpoint written by `conversion import` or by
  training (pretraining, continued pretraining, SFT; LoRA runs with their base), on CPU in one
  process or under torchrun with the TP/PP/EP layout given. It recomputes the whole sequence every
  step (no KV cache): fine for checks and small evaluations, slow for long generations (use the HF
  export for those). Attention is Megatron's unfused DotProductAttention ("local" backend), the
  path that implements learnable sinks; Transformer Engine's fused attention is not used here.

- `AutoLMBackend`: any other HF causal LM (StarCoder, StarCoder2, Llama-family coders), through
  transformers' Auto classes with its own tokenizer, raw completion only: the comparison models
  run through the same harness (prompts, stops, post-processing, sandbox) as gpt-oss.

Each backend has a `codec` (inference.codec): the kit's tokenizer for gpt-oss, the model's own otherwise.
`load_backend(path)` picks the backend from what the directory holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from conversion import lora
from conversion.megatron_dir import TRACKER, has_checkpoint
from inference.codec import HFTokenizerCodec, KitCodec


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the command that makes one."""


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    from megatron_cpu.training import cuda_available  # not megatron_cpu.model: that imports Megatron (seconds, for HF)

    return torch.device("cuda" if cuda_available() else "cpu")


# =============================================================================================
# HF
# =============================================================================================


class _CachedCausalLM:
    """Next-token logits from a transformers causal LM with a KV cache, reused while every sequence
    grows by one token (the sampling loop's pattern); left padding for batches."""

    model: Any
    device: torch.device
    _seqs: list[list[int]] | None = None
    _past: Any = None
    _mask: torch.Tensor | None = None

    @torch.no_grad()
    def next_token_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        if self._extends_cache(sequences):
            new = torch.tensor([[s[-1]] for s in sequences], device=self.device)
            mask = torch.cat([self._mask, torch.ones(len(sequences), 1, dtype=torch.long, device=self.device)], 1)
        else:
            # Left padding: every sequence ends at the last column, so the next step appends one
            # column for all. Pads are masked out and positions count real tokens only.
            width = max(len(s) for s in sequences)
            new = torch.zeros(len(sequences), width, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(new)
            for i, s in enumerate(sequences):
                new[i, width - len(s) :] = torch.tensor(s)
                mask[i, width - len(s) :] = 1
            self._past = None
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1] :]
        out = self.model(
            input_ids=new,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._past,
            use_cache=True,
            logits_to_keep=1,  # the LM head only at the last position (201k columns per token otherwise)
        )
        self._past, self._mask, self._seqs = out.past_key_values, mask, [list(s) for s in sequences]
        return out.logits[:, -1].float()

    def _extends_cache(self, sequences: list[list[int]]) -> bool:
        if self._seqs is None or len(sequences) != len(self._seqs):
            return False
        return all(len(s) == len(c) + 1 and s[:-1] == c for s, c in zip(sequences, self._seqs))

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits [B, T, V] in fp32 (equal-length rows, no padding)."""
        ids = ids.to(self.device)
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.float()


class HFBackend(_CachedCausalLM):
    """transformers' GptOssForCausalLM with a KV cache (reused while every sequence grows by one token)."""

    def __init__(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | None = None) -> None:
        from transformers import GptOssConfig, GptOssForCausalLM

        from conversion.hf_io import ConversionError, HFCheckpoint

        try:
            src = HFCheckpoint(path)
        except ConversionError as e:
            raise CheckpointError(str(e)) from None
        self.name = f"hf:{path}"
        self.device = _device(device)
        # fp32 on CPU (exact comparisons with Megatron), bf16 on a GPU (what the weights are)
        self.dtype = dtype or (torch.float32 if self.device.type == "cpu" else torch.bfloat16)
        config = GptOssConfig.from_dict({k: v for k, v in src.config.items() if k != "quantization_config"})
        config._attn_implementation = "eager"  # the implementation with attention sinks
        with torch.device("meta"):
            model = GptOssForCausalLM(config)
        state = {name: t.to(self.dtype) for name, t in src.dequantized()}
        model.load_state_dict(state, strict=True, assign=True)
        del state
        model.model.rotary_emb.__init__(config, device="cpu")  # non-persistent buffers stay on meta otherwise
        self.model = model.to(self.device).eval()
        self.config = config
        self.vocab_size = config.vocab_size
        self.codec = KitCodec()
        self.model_type = "gpt_oss"

class AutoLMBackend(_CachedCausalLM):
    """Any other causal LM in an HF directory (StarCoder's GPTBigCode, StarCoder2, Llama-family
    coders): transformers' AutoModelForCausalLM with its own tokenizer (local files only), for raw
    completion with the same prompts, stops and post-processing as gpt-oss."""

    def __init__(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | None = None) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        p = Path(path)
        if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise CheckpointError(
                f"{p}: no tokenizer beside the weights (tokenizer.json / tokenizer_config.json): save it there with "
                "tokenizer.save_pretrained(DIR)"
            )
        self.device = _device(device)
        self.dtype = dtype or (torch.float32 if self.device.type == "cpu" else torch.bfloat16)
        try:
            self.config = AutoConfig.from_pretrained(str(p), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(p), dtype=self.dtype, local_files_only=True)
            self.codec = HFTokenizerCodec(p)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{p}: transformers cannot load it as a causal LM: {str(e).splitlines()[0]}") from None
        self.model = model.to(self.device).eval()
        self.model_type = self.config.model_type
        self.name = f"hf-auto:{self.model_type}:{path}"
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]


# =============================================================================================
# Megatron
# =============================================================================================


def _hf_config_for(ckpt: Path, run_config: dict) -> tuple[dict, dict]:
    """(HF config, kit metadata) of a Megatron checkpoint: its sidecar (conversion import, finished
    training runs), else the kit architecture matching the run's model config and no metadata (a
    run still in progress)."""
    from conversion.hf_io import ConversionError
    from conversion.megatron_io import read_sidecar

    try:
        return read_sidecar(ckpt)
    except ConversionError as err:
        model = run_config.get("model") or {}
        if not model:
            raise CheckpointError(
                f"{err}; and no run_config.yaml to infer the architecture from. Make the checkpoint with "
                f"`python -m conversion import --hf HF_DIR --out {ckpt}` or a `python -m recipes run` training run"
            ) from None
    from types import SimpleNamespace

    from gptoss.arch import GptOssArch

    try:  # the run's provider fields, read back through the one arch <-> provider mapping
        return GptOssArch.from_provider(SimpleNamespace(**model)).hf_config_dict(), {}
    except (AttributeError, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{ckpt}: no sidecar, and the run's model config is not a gpt-oss one ({err})") from None


def build_megatron(hf_config: dict, tp: int = 1, pp: int = 1, ep: int = 1) -> tuple[Any, list[torch.nn.Module]]:
    """The bridge and this rank's (empty) model for `hf_config` in this layout, ready for inference."""
    from megatron.core.transformer.enums import AttnBackend

    from conversion.megatron_io import bridge_and_provider, check_layout
    from gptoss.arch import arch_from_hf_config
    from megatron_cpu import model as cpu

    plain = {k: v for k, v in hf_config.items() if k != "quantization_config"}
    check_layout(arch_from_hf_config(plain), tp, pp, ep)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % (tp * pp * ep):
        raise CheckpointError(
            f"--tp {tp} --pp {pp} --ep {ep} needs a multiple of {tp * pp * ep} processes, this run has {world}: "
            f"launch with torchrun --nproc-per-node {tp * pp * ep} -m inference ..."
        )
    cpu.init_process_groups(tp, pp, ep)
    bridge, provider = bridge_and_provider(plain, tp, pp, ep)
    provider.parallel_output = False  # full-vocabulary logits on every tensor-parallel rank
    if cpu.cuda_available():
        # Megatron's own unfused attention: the path with learnable sinks (TE's fused one is not used)
        provider.attention_backend = AttnBackend.local
        provider.masked_softmax_fusion = False
        provider.bf16, provider.params_dtype = True, torch.bfloat16
    model = cpu.build_model(provider)  # CPU-friendly on CPU; provide() + .cuda() with a GPU
    return bridge, [model]


def _build_for_inference(ckpt: Path, iter_dir: Path, tp: int, pp: int, ep: int) -> tuple[Any, list, dict, dict]:
    """megatron_io.load_any's model builder for inference: the config also of a run still in
    progress (from its run_config.yaml), the inference provider settings (build_megatron)."""
    hf_config, meta = _hf_config_for(ckpt, lora.run_config(iter_dir))
    bridge, model = build_megatron(hf_config, tp, pp, ep)
    return bridge, model, hf_config, meta


class MegatronBackend:
    """A Megatron checkpoint, loaded for inference (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        tp: int = 1,
        pp: int = 1,
        ep: int = 1,
        iteration: int | None = None,
        base: str | os.PathLike | None = None,
        merge: bool = False,
    ) -> None:
        from conversion.megatron_io import LoraBaseMissing, load_any

        try:
            self.bridge, self.model, hf_config, meta, adapters = load_any(
                path, tp=tp, pp=pp, ep=ep, iteration=iteration, base=base or None, build=_build_for_inference
            )
        except LoraBaseMissing as err:  # inference can take the base from the command line: say so
            raise CheckpointError(
                f"{err.run} is a LoRA run; its base checkpoint {err.base or '(not recorded)'} does not exist: pass "
                "--base DIR (the Megatron checkpoint the adapters were trained on, e.g. made by "
                "`python -m conversion import`)"
            ) from None
        self.name = f"megatron:{Path(path)}"
        self.lora_merged: int | None = None
        if adapters is not None:
            if merge:
                self.lora_merged = lora.merge_into_base(self.model)
            self.name += f" (LoRA on {meta['lora']['base']}{', merged' if merge else ''})"
        for m in self.model:
            m.eval()
        self.hf_config = hf_config
        self.vocab_size = hf_config["vocab_size"]
        self.codec = KitCodec()
        self.model_type = "gpt_oss"
        self.device = next(self.model[0].parameters()).device

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] (fp32) of equal-length rows; on every rank (collective)."""
        from megatron.core import parallel_state

        from megatron_cpu import model as cpu

        ids = ids.to(self.device)
        pos = torch.arange(ids.shape[1], device=self.device)[None].expand(ids.shape[0], -1)
        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            with cpu.on_cpu():
                return self.model[0](ids, pos, None).float()
        return self._forward_pipeline(ids, pos)

    def _forward_pipeline(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """PP > 1, one micro-batch, forward only: receive the previous stage's hidden states, run
        this stage, send them on; the last stage broadcasts the logits to every stage. (Plain
        send/recv rather than Megatron's training schedule, which hard-codes CUDA tensors.)"""
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        from megatron_cpu import model as cpu

        model = self.model[0]
        hidden_shape = (ids.shape[1], ids.shape[0], self.hf_config["hidden_size"])  # Megatron's [s, b, h]
        dtype = next(model.parameters()).dtype
        if not ps.is_pipeline_first_stage():
            hidden = torch.empty(hidden_shape, dtype=dtype, device=self.device)
            dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        with cpu.on_cpu():
            out = model(ids, pos, None)
        logits_shape = (ids.shape[0], ids.shape[1], self.vocab_size)
        if ps.is_pipeline_last_stage():
            logits = out.float().contiguous()
        else:
            dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
            logits = torch.empty(logits_shape, dtype=torch.float32, device=self.device)
        dist.broadcast(
            logits, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
        return logits

    def next_token_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        # Right padding: under causal attention (full or sliding) no real token sees a pad to its
        # right, so each row's logits at its own last position are exactly the unpadded ones.
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = torch.tensor(s)
        logits = self.forward(ids)
        last = torch.tensor([len(s) - 1 for s in sequences], device=logits.device)
        return logits[torch.arange(len(sequences), device=logits.device), last].float().cpu()


# =============================================================================================
# Choosing
# =============================================================================================


def checkpoint_kind(path: str | os.PathLike) -> str:
    """'megatron', 'hf' (gpt-oss) or 'hf-auto' (any other causal LM), from the files in `path`;
    CheckpointError naming what is missing."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"{p}: no such checkpoint. Make one with `python -m conversion import --hf HF_DIR --out {p}` "
            f"(Megatron), `python -m conversion export --megatron DIR --out {p}` (HF) or a training run"
        )
    if has_checkpoint(p):
        return "megatron"
    if (p / "config.json").is_file():
        try:
            cfg = json.loads((p / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p / 'config.json'}: not JSON ({e})") from None
        # gpt-oss keeps its exact path (the kit's tokenizer, MXFP4 dequantization, harmony chat);
        # any other model type goes through transformers' Auto classes with its own tokenizer
        return "hf" if cfg.get("model_type") == "gpt_oss" else "hf-auto"
    raise CheckpointError(
        f"{p}: neither a Megatron checkpoint ({TRACKER}) nor an HF one (config.json)"
    )


def load_backend(path: str | os.PathLike, **kwargs: Any):
    """HFBackend or MegatronBackend for `path`; kwargs go to the chosen class (unknown ones are
    refused when they matter: a Megatron layout for an HF directory)."""
    kind = checkpoint_kind(path)
    if kind in ("hf", "hf-auto"):
        layout = {k: kwargs.pop(k) for k in ("tp", "pp", "ep") if k in kwargs}
        if any(v != 1 for v in layout.values()):
            raise CheckpointError(f"{path} is an HF checkpoint: --tp/--pp/--ep apply to Megatron checkpoints only")
        for k in ("iteration", "base", "merge"):
            if kwargs.pop(k, None) not in (None, False):
                raise CheckpointError(f"{path} is an HF checkpoint: --{k} applies to Megatron checkpoints only")
        return HFBackend(path, **kwargs) if kind == "hf" else AutoLMBackend(path, **kwargs)
    kwargs.pop("dtype", None)
    kwargs.pop("device", None)
    return MegatronBackend(path, **kwargs)
