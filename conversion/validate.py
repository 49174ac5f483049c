"""Validate a Megatron checkpoint against the HF checkpoint it came from: weights, then logits.

Weights: every tensor is read back from the checkpoint one layer at a time, mapped to HF names
(conversion.streaming, no model built: this part runs for 20b/120b on a small host) and compared with the source;
bf16 sources must match bit for bit, MXFP4 sources must match their dequantized values (E2M1 x
2**k is exact in bf16, so that is bitwise too). Logits: transformers' GptOssForCausalLM (loaded from
the source, MXFP4 dequantized by our codec) and the Megatron model (loaded from the checkpoint),
both in fp32, on a fixed prompt set longer than the sliding window. Tolerances are stated in
`Tolerances` and printed with the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from conversion.hf_io import HFCheckpoint
from conversion.megatron_io import load_megatron, read_sidecar, stream_hf_weights_from_disk


@dataclass(frozen=True)
class Tolerances:
    # fp32 on both sides: differences come from summation order only (3e-6 seen on tiny).
    max_abs: float = 1e-3
    min_cosine: float = 0.99999
    min_top1: float = 1.0


@dataclass
class Report:
    weights_checked: int = 0
    weight_mismatches: list[str] = field(default_factory=list)
    logits: dict[str, float] | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    notes: list[str] = field(default_factory=list)

    @property
    def weights_ok(self) -> bool:
        return self.weights_checked > 0 and not self.weight_mismatches

    @property
    def logits_ok(self) -> bool:
        if self.logits is None:
            return True
        t = self.tolerances
        lg = self.logits
        return lg["max_abs"] <= t.max_abs and lg["cosine"] >= t.min_cosine and lg["top1"] >= t.min_top1

    @property
    def ok(self) -> bool:
        return self.weights_ok and self.logits_ok

    def text(self) -> str:
        lines = [f"weights: {self.weights_checked} tensors, {len(self.weight_mismatches)} mismatched"]
        lines += [f"  MISMATCH {m}" for m in self.weight_mismatches[:20]]
        if self.logits is not None:
            t, lg = self.tolerances, self.logits
            lines.append(
                f"logits ({int(lg['tokens'])} tokens): max|diff| {lg['max_abs']:.3g} (<= {t.max_abs:g}), "
                f"cosine {lg['cosine']:.8f} (>= {t.min_cosine:g}), top-1 agreement {lg['top1']:.4f} (>= {t.min_top1:g})"
            )
        lines += self.notes
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def prompts(vocab_size: int, seq_len: int = 40) -> tuple[torch.Tensor, str | None]:
    """The fixed prompt set: a tokenized English/code text and seeded random ids, `seq_len` each
    (longer than the 128-token window of the released models only with seq_len > 128; the tiny
    model's window is 8). A vocabulary smaller than the tokenizer's (research variants) cannot embed
    the text's ids: then both rows are seeded random ids inside the vocabulary, and the second value
    says so for the report (None otherwise)."""
    from gptoss import tokenizer

    text = (
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
        "The quick brown fox jumps over the lazy dog. "
    ) * 8
    ids = torch.tensor(tokenizer.encoding().encode(text)[:seq_len])
    g = torch.Generator().manual_seed(1234)
    # below the harmony specials (199998+) when the vocabulary has them: ordinary text tokens
    rand = torch.randint(0, min(vocab_size, 199_998), (seq_len,), generator=g)
    note = None
    if int(ids.max()) >= vocab_size:
        note = (
            f"prompts: the vocabulary ({vocab_size:,}) is smaller than the tokenizer's text ids (up to "
            f"{int(ids.max()):,}): both prompts are seeded random ids below {vocab_size:,}"
        )
        ids = torch.randint(0, vocab_size, (seq_len,), generator=g)
    return torch.stack([ids, rand]), note


def compare_weights(src: HFCheckpoint, exported, report: Report) -> None:
    seen = set()
    for name, tensor in exported:
        seen.add(name)
        report.weights_checked += 1
        try:
            ref = src.get_dequantized(name)
        except Exception as err:  # noqa: BLE001 - report, do not stop at the first problem
            report.weight_mismatches.append(f"{name}: not in source ({err})")
            continue
        got = tensor.to(ref.dtype)
        if got.shape != ref.shape:
            report.weight_mismatches.append(f"{name}: shape {list(got.shape)} != source {list(ref.shape)}")
        elif not torch.equal(got, ref):
            diff = (got.float() - ref.float()).abs()
            report.weight_mismatches.append(
                f"{name}: {int((diff > 0).sum())} of {diff.numel()} values differ, max |diff| {diff.max().item():.3g}"
            )
    for name in sorted(set(src.dequantized_names()) - seen):
        report.weight_mismatches.append(f"{name}: in source, not in the Megatron checkpoint")


def hf_logits(src: HFCheckpoint, ids: torch.Tensor) -> torch.Tensor:
    """transformers' reference forward in fp32, weights streamed from the source (MXFP4 dequantized)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig.from_dict({k: v for k, v in src.config.items() if k != "quantization_config"})
    with torch.device("meta"):
        model = GptOssForCausalLM(config)
    state = {name: t.float() for name, t in src.dequantized()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    # `assign` keeps non-persistent buffers (rotary inv_freq) on meta: recompute them on CPU.
    model.model.rotary_emb.__init__(config, device="cpu")
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def megatron_logits(model, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    model.eval()
    with torch.no_grad():
        return model(ids, pos, None).float()


def _round_to_source_precision(model: torch.nn.Module, src: HFCheckpoint) -> None:
    """Give the Megatron model the numbers the HF side holds, so that the logits compare two
    implementations of the same weights, at fp32 tolerance.

    A checkpoint trained in fp32 and exported to a bf16 HF directory differs from it by bf16
    rounding alone (the weight check above proves that, tensor by tensor); left unrounded, that
    rounding moves the logits by ~1e-2 and hides nothing but would fail the fp32 bar. Weights
    imported from a bf16 source are bf16 values already: rounding them changes nothing.
    """
    if src.float_dtypes() == {"BF16"}:  # (MXFP4 experts dequantize exactly to bf16)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(p.dtype))


def _as_trained(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """An HF-named tensor of a QAT run as the run's forward saw it: expert weights ([E, in, out])
    fake-quantized along `in` (Megatron's [out, in] rows), everything else unchanged."""
    from conversion import mxfp4

    if not mxfp4.is_expert_weight(name):
        return tensor
    return mxfp4.fake_quantize(tensor.transpose(1, 2)).transpose(1, 2)


def logits_metrics(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {
        "tokens": float(a.shape[0]),
        "max_abs": (a - b).abs().max().item(),
        "cosine": cos.min().item(),
        "top1": (a.argmax(-1) == b.argmax(-1)).double().mean().item(),
    }


def validate(
    hf_path: str | os.PathLike,
    megatron_dir: str | os.PathLike,
    *,
    logits: bool = True,
    seq_len: int = 40,
    tolerances: Tolerances | None = None,
) -> Report:
    """Compare `megatron_dir` with `hf_path`; returns the report (report.ok says pass/fail)."""
    from conversion import mxfp4

    src = HFCheckpoint(hf_path)
    report = Report(tolerances=tolerances or Tolerances())
    config, meta = read_sidecar(megatron_dir)
    weights = stream_hf_weights_from_disk(megatron_dir, config, meta)
    # A QAT run trained its experts on the MXFP4 grid: its MXFP4 export must hold exactly those
    # grid values (no second rounding), so compare with them, and run the model as it trained.
    qat = src.is_mxfp4 and mxfp4.is_qat_run(megatron_dir)
    if qat:
        weights = ((name, _as_trained(name, t)) for name, t in weights)
        report.notes.append(
            "QAT run: the MXFP4 experts were compared with the run's fake-quantized weights (what it trained "
            "with, conversion.mxfp4.fake_quantize); the logits with the run's model fake-quantizing them"
        )
    compare_weights(src, weights, report)
    if logits:
        _, model, _, _ = load_megatron(Path(megatron_dir))
        if qat:
            mxfp4.install_fake_quant(model)
        ids, note = prompts(src.arch.vocab_size, seq_len)
        report.notes += [note] if note else []
        _round_to_source_precision(model[0], src)
        meg = megatron_logits(model[0], ids)
        del model
        report.logits = logits_metrics(hf_logits(src, ids), meg)
    return report


def validate_hf_pair(source: str | os.PathLike, exported: str | os.PathLike) -> Report:
    """An exported HF checkpoint against its source, tensor by tensor (bitwise on the bf16 view).

    When the export is MXFP4 and the source is not, the source's experts are quantized with the
    same codec first: the export must hold exactly those values.
    """
    from conversion import mxfp4

    a, b = HFCheckpoint(source), HFCheckpoint(exported)
    report = Report()

    def exported_view():
        for name in b.dequantized_names():
            yield name, b.get_dequantized(name)

    if b.is_mxfp4 and not a.is_mxfp4:

        class _Requantized:
            def __getattr__(self, attr):
                return getattr(a, attr)

            def get_dequantized(self, name):
                t = a.get_dequantized(name)
                return mxfp4.expert_from_mxfp4(*mxfp4.expert_to_mxfp4(t)) if mxfp4.is_expert_weight(name) else t

        compare_weights(_Requantized(), exported_view(), report)  # type: ignore[arg-type]
    else:
        compare_weights(a, exported_view(), report)
    return report
