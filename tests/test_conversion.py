"""conversion/: HF <-> Megatron for gpt-oss on CPU, with the tiny architecture and random weights.

One module-scoped checkpoint of each kind is made locally (transformers' GptOssForCausalLM,
save_pretrained); nothing is mocked. Controls corrupt a checkpoint the way real bugs did and check
that validation fails.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conversion import mxfp4
from conversion.hf_io import INDEX, ConversionError, HFCheckpoint
from conversion.random_init import make_random_hf
from gptoss.arch import TINY
from megatron_cpu.compat import import_bridge

# MXFP4 blocks 32 input values: the expert widths must be multiples of 32. TINY's FFN (80) is not,
# so the MXFP4 tests use TINY with a 64-wide FFN (still non-square against hidden 96).
TINY_MX = replace(TINY, name="tiny-mxfp4", expert_ffn_hidden_size=64)
# Square experts (FFN == hidden) as in the released models: the only case where a transposed
# down_proj has the right shape, hence the one the orientation control needs.
TINY_SQUARE = replace(TINY, name="tiny-square", expert_ffn_hidden_size=96)


# ---- helpers -----------------------------------------------------------------------------------


def make_hf(path: Path, arch, seed: int = 0, *, snap_experts_to_mxfp4: bool = False) -> Path:
    return make_random_hf(path, arch, seed, snap_experts_to_mxfp4=snap_experts_to_mxfp4)


def to_mxfp4_checkpoint(src: Path, dst: Path) -> Path:
    """Rewrite a bf16 checkpoint's experts as *_blocks/*_scales, like the official release."""
    from safetensors.torch import save_file

    ckpt = HFCheckpoint(src)
    tensors = {}
    for name in ckpt.weight_map:
        t = ckpt.get(name)
        if mxfp4.is_expert_weight(name):
            tensors[name + "_blocks"], tensors[name + "_scales"] = mxfp4.expert_to_mxfp4(t)
        else:
            tensors[name] = t
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(ckpt.config, quantization_config=mxfp4.quantization_config())
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy2(f, dst / f.name)
    return dst


def corrupt_megatron(src: Path, dst: Path, fn) -> Path:
    """Load a Megatron checkpoint, apply `fn(model)` to its weights, save it as `dst`."""
    from conversion.megatron_io import load_megatron
    from megatron_cpu import model as cpu

    _, model, _, _ = load_megatron(src)
    with torch.no_grad():
        fn(model[0])
    import_bridge()
    from megatron.bridge.training.model_load_save import save_megatron_model

    with cpu.on_cpu():
        save_megatron_model(model, str(dst), ckpt_format="torch_dist")
    shutil.copytree(src / "hf", dst / "hf")
    shutil.copy2(src / "kit_conversion.json", dst / "kit_conversion.json")
    return dst


def experts(model):
    for layer in model.decoder.layers:
        yield from layer.mlp.experts.local_experts


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conversion")


@pytest.fixture(scope="module")
def tiny(work):
    """(HF source, its Megatron import)."""
    from conversion.megatron_io import import_hf

    hf = make_hf(work / "hf", TINY)
    return hf, import_hf(hf, work / "megatron")


@pytest.fixture(scope="module")
def tiny_mx(work):
    """(bf16 twin, MXFP4 source with the same values, Megatron import of the MXFP4 source)."""
    from conversion.megatron_io import import_hf

    twin = make_hf(work / "mx-twin", TINY_MX, seed=1, snap_experts_to_mxfp4=True)
    src = to_mxfp4_checkpoint(twin, work / "mx-src")
    return twin, src, import_hf(src, work / "mx-megatron")


# ---- MXFP4 codec (no Megatron) -----------------------------------------------------------------


def _reference_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: per 32-block scale 2**ceil(log2(amax/6)), nearest E2M1 grid value."""
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)
    blocks = x.reshape(-1, 32).astype(np.float64)
    amax = np.abs(blocks).max(axis=1)
    e = np.where(amax > 0, np.ceil(np.log2(np.where(amax > 0, amax, 1) / 6.0)), -127)
    scale = 2.0**e
    mag = np.abs(blocks) / scale[:, None]
    dist = np.abs(mag[..., None] - grid)
    q = grid[dist.argmin(-1)] * np.sign(blocks) * scale[:, None]
    return q.reshape(x.shape), np.repeat(scale, 32).reshape(x.shape)


@pytest.mark.parametrize("std", [1e-4, 0.02, 1.0, 300.0])
def test_mxfp4_quantization_error_within_the_format_bound(std):
    x = (torch.randn(8, 64, 96, generator=torch.Generator().manual_seed(0)) * std).to(torch.bfloat16)
    blocks, scales = mxfp4.quantize(x)
    assert blocks.shape == (8, 64, 3, 16) and scales.shape == (8, 64, 3)
    q = mxfp4.dequantize(blocks, scales, torch.float64).numpy()
    ref, scale = _reference_quantize(x.double().numpy())
    xd = x.double().numpy()
    # the format's bound: half the widest grid gap (4..6) times the block scale; no clipping
    assert np.all(np.abs(q - xd) <= scale + 0)
    # nearest representable value: as close as the reference's (ties may pick either neighbour)
    assert np.all(np.abs(q - xd) <= np.abs(ref - xd) + 1e-12 * scale)
    assert (q != ref).mean() < 0.01  # differences only at exact ties
    # the decoder agrees with transformers' (the one vLLM/transformers users run)
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    hf = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # returns [.., in, out]
    assert torch.equal(hf.transpose(1, 2).double(), torch.from_numpy(q))


def test_mxfp4_exact_values_and_nibble_order():
    vals = torch.tensor([0.5, -6.0, 1.5, 3.0] + [0.0] * 28)
    blocks, scales = mxfp4.quantize(vals)
    assert scales.tolist() == [127]  # 2**0: 6 is the largest E2M1 value
    assert blocks[0, :2].tolist() == [0x1 | (0x8 | 0x7) << 4, 0x3 | 0x5 << 4]  # low nibble first
    assert torch.equal(mxfp4.dequantize(blocks, scales, torch.float32), vals)
    # re-quantizing dequantized values gives the same values (export after import is stable)
    x = torch.randn(4, 32, 64).to(torch.bfloat16)
    once = mxfp4.expert_from_mxfp4(*mxfp4.expert_to_mxfp4(x))
    assert torch.equal(mxfp4.expert_from_mxfp4(*mxfp4.expert_to_mxfp4(once)), once)


# ---- bad input (no Megatron) -------------------------------------------------------------------


def test_bad_inputs_name_the_file_and_tensor(tiny, tmp_path):
    hf, _ = tiny
    bad = tmp_path / "bad"
    shutil.copytree(hf, bad)
    data = (bad / "model.safetensors").read_bytes()

    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"model\.safetensors: truncated safetensors file: tensor '.*'"):
        HFCheckpoint(bad)
    (bad / "model.safetensors").write_bytes(data)

    names = list(HFCheckpoint(bad).weight_map)
    index = {
        "weight_map": {n: ("model.safetensors" if i % 2 else "model-00002.safetensors") for i, n in enumerate(names)}
    }
    (bad / INDEX).write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"model-00002\.safetensors: missing shard"):
        HFCheckpoint(bad)
    (bad / INDEX).unlink()

    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg | {"model_type": "llama"}))
    with pytest.raises(ConversionError, match="not a gpt-oss config"):
        HFCheckpoint(bad)
    (bad / "config.json").write_text(json.dumps(cfg | {"intermediate_size": 96}))
    with pytest.raises(
        ConversionError,
        match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.experts\.gate_up_proj_bias' has shape "
        rf"\[4, {2 * TINY.expert_ffn_hidden_size}\], the architecture in config\.json needs \[4, 192\]",
    ):
        HFCheckpoint(bad)


def test_layout_that_cannot_be_split_is_refused():
    from conversion.megatron_io import check_layout

    with pytest.raises(ConversionError, match="attention heads 4 not divisible by TP=3"):
        check_layout(TINY, 3, 1, 1)
    with pytest.raises(ConversionError, match="experts 4 not divisible by EP=3"):
        check_layout(TINY, 1, 1, 3)
    with pytest.raises(ConversionError, match="layers 2 not divisible by PP=4"):
        check_layout(TINY, 1, 4, 1)


# ---- bf16 ----------------------------------------------------------------------------------


def test_bf16_round_trip_is_bit_exact(tiny, work):
    from conversion.megatron_io import export_hf
    from conversion.validate import validate_hf_pair

    hf, meg = tiny
    out = export_hf(meg, work / "export-bf16")
    report = validate_hf_pair(hf, out)
    assert report.ok, report.text()
    assert report.weights_checked == len(HFCheckpoint(hf).weight_map) == 37
    assert (out / "tokenizer.json").is_file() and json.loads((out / "config.json").read_text())["sliding_window"] == 8


def test_validate_weights_and_logits_past_the_window(tiny):
    from conversion.validate import validate

    hf, meg = tiny
    report = validate(hf, meg, seq_len=40)  # 5x TINY.sliding_window
    assert report.ok, report.text()
    assert report.logits["max_abs"] < 1e-4 and report.logits["top1"] == 1.0


def test_validate_logits_of_a_vocabulary_smaller_than_the_tokenizer(work, capsys):
    """A research variant with 1,536 vocabulary entries: the tokenizer's text ids do not fit its
    embedding, so the logit check draws its prompts inside the vocabulary and says so."""
    from conversion.__main__ import main
    from conversion.megatron_io import import_hf

    hf = make_hf(work / "small-vocab-hf", replace(TINY, name="tiny-v1536", vocab_size=1536))
    meg = import_hf(hf, work / "small-vocab-megatron")
    assert main(["validate", "--hf", str(hf), "--megatron", str(meg)]) == 0
    out = capsys.readouterr().out
    assert "RESULT: PASS" in out and "logits (80 tokens)" in out
    assert "the vocabulary (1,536) is smaller than the tokenizer's text ids" in out


def test_force_replaces_only_the_kits_own_output(tiny, tmp_path):
    """--force may replace the kit's earlier output (marked), never a directory of the user's."""
    from conversion.megatron_io import export_hf
    from kit.fs import KIT_OUTPUT_MARK

    hf, meg = tiny
    mine = tmp_path / "models"
    (mine / "gpt-oss-20b").mkdir(parents=True)
    (mine / "gpt-oss-20b" / "config.json").write_text("{}")
    with pytest.raises(ConversionError, match=f"replaces only a directory the kit wrote .*{KIT_OUTPUT_MARK}"):
        export_hf(meg, mine, force=True)
    assert (mine / "gpt-oss-20b" / "config.json").read_text() == "{}" and not list(tmp_path.glob(".models*"))
    out = export_hf(meg, tmp_path / "export")
    assert (out / KIT_OUTPUT_MARK).is_file()
    (out / "stale.txt").write_text("from the first export")
    export_hf(meg, out, force=True)  # the kit's own: replaced whole
    assert not (out / "stale.txt").exists() and (out / KIT_OUTPUT_MARK).is_file()


def test_validate_cli_weights_only(tiny, capsys):
    from conversion.__main__ import main

    hf, meg = tiny
    assert main(["validate", "--hf", str(hf), "--megatron", str(meg), "--no-logits"]) == 0
    out = capsys.readouterr().out
    assert "weights: 37 tensors, 0 mismatched" in out and "logits" not in out and "RESULT: PASS" in out


def test_refuses_overwrite_and_leaves_nothing_on_failure(tiny, work, monkeypatch):
    from conversion import hf_io
    from conversion.megatron_io import export_hf, import_hf

    hf, meg = tiny
    with pytest.raises(ConversionError, match="already exists"):
        import_hf(hf, meg)

    def boom(self, name, tensor):
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(hf_io.ShardedWriter, "add", boom)
    with pytest.raises(KeyboardInterrupt):
        export_hf(meg, work / "interrupted")
    assert not (work / "interrupted").exists()
    assert not list(work.glob(".interrupted*"))


# ---- MXFP4 ---------------------------------------------------------------------------------


def test_mxfp4_source_equals_its_bf16_twin_after_import(tiny_mx, work):
    from conversion.megatron_io import export_hf
    from conversion.validate import validate, validate_hf_pair

    twin, src, meg = tiny_mx
    assert HFCheckpoint(src).is_mxfp4
    report = validate(src, meg)
    assert report.ok, report.text()
    out = export_hf(meg, work / "mx-export-bf16")
    report = validate_hf_pair(twin, out)
    assert report.ok, report.text()


def test_mxfp4_export_reproduces_the_dequantized_values(tiny_mx, work):
    from conversion.megatron_io import export_hf
    from conversion.validate import validate_hf_pair

    _, src, meg = tiny_mx
    out = export_hf(meg, work / "mx-export-mxfp4", dtype="mxfp4")
    exported = HFCheckpoint(out)
    assert exported.is_mxfp4
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"
    report = validate_hf_pair(src, out)
    assert report.ok, report.text()
    # experts at 4.25 bits instead of 16
    name = "model.layers.0.mlp.experts.gate_up_proj"
    packed = exported.get(name + "_blocks").numel() + exported.get(name + "_scales").numel()
    assert packed / (HFCheckpoint(work / "mx-export-bf16").get(name).numel() * 2) == pytest.approx(4.25 / 16)


# ---- controls: validation must catch the known layout bugs -------------------------------------


def test_swapped_gate_up_makes_validate_fail(tiny, work):
    from conversion.validate import validate

    hf, meg = tiny

    def swap(model):
        for e in experts(model):
            for p in (e.linear_fc1.weight, e.linear_fc1.bias):
                gate, up = p.data.chunk(2, dim=0)
                p.data.copy_(torch.cat([up, gate]))

    bad = corrupt_megatron(meg, work / "swapped", swap)
    report = validate(hf, bad)
    assert not report.ok
    assert any("gate_up_proj:" in m for m in report.weight_mismatches)
    assert not report.logits_ok, report.text()


def test_transposed_down_proj_makes_validate_fail(work):
    from conversion.megatron_io import import_hf
    from conversion.validate import validate

    hf = make_hf(work / "square", TINY_SQUARE, seed=2)
    meg = import_hf(hf, work / "square-megatron")
    assert validate(hf, meg).ok

    def transpose(model):
        for e in experts(model):
            e.linear_fc2.weight.data.copy_(e.linear_fc2.weight.data.t().clone())

    report = validate(hf, corrupt_megatron(meg, work / "square-transposed", transpose))
    assert any("down_proj:" in m for m in report.weight_mismatches)
    assert not report.logits_ok, report.text()


# ---- parallel layouts (two CPU processes, gloo) ----------------------------------------------


@pytest.mark.slow  # torchrun ranks: about 40 s each on 2 cores
@pytest.mark.parametrize(
    ("imported", "exported"),
    [(("--tp", "2"), ()), ((), ("--ep", "2")), ((), ("--pp", "2"))],
    ids=["tp2-bridge-import-stream-export", "stream-import-ep2-bridge-export", "stream-import-pp2-bridge-export"],
)
def test_import_and_export_across_parallel_layouts(tiny, tmp_path, imported, exported):
    """AutoBridge under torchrun with 2 ranks on one side, the streamed engine (one process) on the
    other: a checkpoint imported sharded is exported by the streamed reader, and a streamed import
    is loaded and exported re-sharded; both bit-exact."""
    import os
    import socket
    import subprocess
    import sys

    from conversion.validate import validate_hf_pair

    hf, _ = tiny
    root = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")

    def run(*args: str, layout: tuple[str, ...]) -> None:
        cmd = [sys.executable, "-m", "conversion", *args]
        if layout:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = str(s.getsockname()[1])
            cmd = [
                str(torchrun),
                "--nproc-per-node",
                "2",
                "--master-port",
                port,
                *cmd[1:],
                "--engine",
                "bridge",
                *layout,
            ]
        env = {**os.environ}
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run("import", "--hf", str(hf), "--out", str(tmp_path / "meg"), layout=imported)
    layout = json.loads((tmp_path / "meg" / "kit_conversion.json").read_text())["layout_at_import"]
    if imported:
        assert layout == {"tp": 2, "pp": 1, "ep": 1, "engine": "bridge"}
    else:
        assert layout == {"tp": 1, "pp": 1, "ep": 1, "engine": "stream"}
    run("export", "--megatron", str(tmp_path / "meg"), "--out", str(tmp_path / "hf"), layout=exported)
    report = validate_hf_pair(hf, tmp_path / "hf")
    assert report.ok and report.weights_checked == 37, report.text()


# ---- streamed conversion (the default engine) against AutoBridge ------------------------------


def stored_layout(megatron_dir: Path) -> dict:
    """Every entry of a torch_dist checkpoint: global shape and chunk layout (or 'bytes')."""
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(str(megatron_dir / "iter_0000000")).read_metadata().state_dict_metadata
    return {
        k: (tuple(v.size), sorted((tuple(c.offsets), tuple(c.sizes)) for c in v.chunks))
        if hasattr(v, "size")
        else "bytes"
        for k, v in md.items()
    }


@pytest.mark.parametrize("kind", ["bf16", "mxfp4"])
def test_streamed_conversion_equals_autobridge(tiny, tiny_mx, work, kind):
    """The default (streamed) import writes the checkpoint AutoBridge writes: same entries, same
    chunks, same values (stored in bf16 instead of fp32); the streamed export writes the same bytes
    as AutoBridge's export of it."""
    import filecmp

    from conversion.megatron_io import export_hf, import_hf
    from conversion.streaming import read_stored, stored_tensors

    src, streamed = (tiny[0], tiny[1]) if kind == "bf16" else (tiny_mx[1], tiny_mx[2])
    bridged = import_hf(src, work / f"bridge-{kind}", engine="bridge")
    assert stored_layout(streamed) == stored_layout(bridged)
    a, b = (read_stored(d / "iter_0000000", stored_tensors(d / "iter_0000000")) for d in (streamed, bridged))
    assert set(a) == set(b) and len(a) == 16
    assert {t.dtype for t in a.values()} == {torch.bfloat16} and {t.dtype for t in b.values()} == {torch.float32}
    for key in a:
        assert torch.equal(a[key].float(), b[key]), key
    # both exports from the same checkpoint: identical files
    out_s = export_hf(streamed, work / f"export-stream-{kind}", dtype=kind)
    out_b = export_hf(streamed, work / f"export-bridge-{kind}", dtype=kind, engine="bridge")
    names = sorted(p.name for p in out_s.iterdir())
    assert names == sorted(p.name for p in out_b.iterdir()) and any(n.endswith(".safetensors") for n in names)
    assert all(filecmp.cmp(out_s / n, out_b / n, shallow=False) for n in names), names


def test_streamed_engine_refuses_torchrun(monkeypatch):
    from conversion.megatron_io import check_engine

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConversionError, match="--engine bridge"):
        check_engine("stream")
    check_engine("bridge")
    with pytest.raises(ConversionError, match="--engine must be one of"):
        check_engine("fast")


# A child process runs import, then export, as the CLI does, and prints the peak of the bytes its
# heap holds during each: glibc's mallinfo2() (in-use chunks of every arena + mmapped chunks), sampled
# every 0.2 ms by a thread. Unlike peak RSS, this does not count memory that malloc keeps after a free
# (arena caching and fragmentation vary from run to run and with machine load: RSS peaks of the same
# run differed by 120 MiB), only what the code holds.
_MEASURE = """
import ctypes, sys, threading, time
from conversion.megatron_io import export_hf, import_hf

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
peak = [0]
def sample():
    while True:
        m = libc.mallinfo2()
        peak[0] = max(peak[0], m.uordblks + m.hblkhd)
        time.sleep(0.0002)
threading.Thread(target=sample, daemon=True).start()
hf, meg, out = sys.argv[1:]
import_hf(hf, meg)
time.sleep(0.01)
print("PEAK import", peak[0])
import torch.distributed
torch.distributed.destroy_process_group()  # export as `python -m conversion export` runs it: no process group
peak[0] = 0
export_hf(meg, out, dtype="mxfp4", max_shard_bytes=32 << 20)
time.sleep(0.01)
print("PEAK export", peak[0])
"""


@pytest.mark.slow  # converts models of two depths, measured in subprocesses: about 55 s on 2 cores
def test_streamed_conversion_memory_does_not_grow_with_depth(tmp_path):
    """Peak heap bytes of import and export for 2 and 8 layers of the same widths (48 MiB of bf16
    experts per layer, small vocabulary so that layers dominate): a converter that held the model
    would grow by the 6 extra layers (288 MiB, twice that in fp32, as AutoBridge's engine on CPU
    does); the streamed one holds about one layer, so the growth must stay under one layer's bytes."""
    import subprocess
    import sys

    from conversion.random_init import make_random_hf_streamed
    from gptoss.arch import GptOssArch

    wide = GptOssArch(
        name="wide", num_layers=2, hidden_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
        num_experts=8, experts_per_token=2, expert_ffn_hidden_size=1024, vocab_size=2048,
        max_position_embeddings=4096, initial_context_length=128, sliding_window=8,
    )  # fmt: skip
    layer_bytes = wide.num_experts * 3 * wide.hidden_size * wide.expert_ffn_hidden_size * 2  # fc1 (2x) + fc2, bf16
    peaks = {}
    for layers in (2, 8):
        hf = make_random_hf_streamed(tmp_path / f"hf-{layers}", replace(wide, num_layers=layers), mxfp4_experts=True)
        out = tmp_path / f"out-{layers}"
        cmd = [sys.executable, "-c", _MEASURE, str(hf), str(tmp_path / f"meg-{layers}"), str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[layers] = {
            w: int(n) for _, w, n in (line.split() for line in done.stdout.splitlines() if line.startswith("PEAK"))
        }
        assert len(list(out.glob("*.safetensors"))) > 1
    print(f"peak heap bytes by depth: {peaks}; one layer: {layer_bytes}")
    for what in ("import", "export"):
        small, big = peaks[2][what], peaks[8][what]
        assert small > layer_bytes / 4, f"{what}: the sampler saw {small >> 20} MiB: it measures nothing"
        assert big - small < layer_bytes, f"{what}: peak heap {small >> 20} MiB -> {big >> 20} MiB (one layer: {layer_bytes >> 20} MiB)"
    assert HFCheckpoint(tmp_path / "out-8").is_mxfp4  # values: the round-trip tests above


def test_random_cli_streamed_mxfp4_has_the_release_layout(tiny, tmp_path):
    """`conversion random --mxfp4` (the tensor-by-tensor writer used for 20b benchmarks) writes the
    names, shapes and dtypes of transformers' own save, experts as MXFP4 blocks/scales."""
    from conversion.__main__ import main

    assert main(["random", "--size", "tiny", "--mxfp4", "--out", str(tmp_path / "mx")]) == 0
    streamed, reference = HFCheckpoint(tmp_path / "mx"), HFCheckpoint(tiny[0])
    assert streamed.is_mxfp4 and streamed.float_dtypes() == reference.float_dtypes() == {"BF16"}
    assert sorted(streamed.dequantized_names()) == sorted(reference.dequantized_names())
    for name in reference.dequantized_names():
        assert streamed.get_dequantized(name).shape == reference.get(name).shape, name


def test_damaged_megatron_checkpoint_is_a_clear_error(tiny, tmp_path, capsys):
    """A truncated data file or a missing .metadata: an error naming the checkpoint, exit 2 from
    the CLI, and no output directory left behind."""
    from conversion.__main__ import main

    _, meg = tiny
    for damage in ("truncate", "no-metadata"):
        bad = tmp_path / damage
        shutil.copytree(meg, bad)
        it = bad / "iter_0000000"
        if damage == "truncate":
            data = it / "__0_0.distcp"
            with open(data, "r+b") as fh:
                fh.truncate(data.stat().st_size // 2)
        else:
            (it / ".metadata").unlink()
        out = tmp_path / f"out-{damage}"
        assert main(["export", "--megatron", str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: {it}: " in err and ("cannot read" in err or "unreadable torch_dist metadata" in err), err
        assert not out.exists() and not list(tmp_path.glob(f".out-{damage}*"))
    assert main(["random", "--size", "7b", "--out", str(tmp_path / "r")]) == 2
    assert "unknown gpt-oss size '7b'" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_import_failing_while_writing_leaves_nothing(tiny, tmp_path, monkeypatch):
    """A write that fails halfway (here an OSError injected into the chunk converter, standing in
    for a full disk, which this machine cannot stage) is a ConversionError naming the output, and
    no directory that looks like a checkpoint is left."""
    from conversion import streaming
    from conversion.megatron_io import import_hf

    calls = []

    def failing(self, key, layer):
        calls.append(key)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return original(self, key, layer)

    original = streaming._FromHF.megatron_tensor
    monkeypatch.setattr(streaming._FromHF, "megatron_tensor", failing)
    out = tmp_path / "meg"
    with pytest.raises(ConversionError, match=f"{out}: writing the Megatron checkpoint .* failed: OSError: .*No space"):
        import_hf(tiny[0], out)
    assert len(calls) > 3 and not out.exists() and not list(tmp_path.iterdir())
