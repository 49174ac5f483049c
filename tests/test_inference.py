"""inference: generation from Megatron and HF checkpoints of the tiny gpt-oss (real architecture,
random weights), sampling, chat rendering, validation loss, LoRA runs and the CLI, on CPU in fp32.

One random HF checkpoint is imported to Megatron and exported back to HF (conversion/), once per
module. A LoRA run is trained for real (megatron-bridge's finetune() through recipes.run, on CPU)
in a subprocess, so that the adapters are loaded from the format the bridge actually saves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import CORPUS, write_indexed_dataset

from conversion.random_init import make_random_hf
from gptoss.arch import TINY
from gptoss.tokenizer import EOD_ID, SPECIAL, encoding
from inference import chat
from inference.sampling import SamplingParams, generate

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 12


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: random HF checkpoint, its Megatron import (where the LoRA recipe looks for its
    base), the bf16 and MXFP4 HF exports of that import, and a tiny indexed dataset."""
    os.environ.setdefault("MASTER_PORT", _free_port())  # torch.distributed (gloo) in this process
    from conversion.megatron_io import export_hf, import_hf

    ws = tmp_path_factory.mktemp("ws")
    # experts snapped to MXFP4 values, so that the MXFP4 export holds exactly the same weights
    hf = make_random_hf(ws / "models/gpt-oss-tiny/src-hf", TINY, seed=3, snap_experts_to_mxfp4=True)
    meg = import_hf(hf, ws / "models/gpt-oss-tiny/megatron")
    export_hf(meg, ws / "models/gpt-oss-tiny/hf")
    export_hf(meg, ws / "models/gpt-oss-tiny/hf-mxfp4", dtype="mxfp4")
    write_indexed_dataset(ws / "data/pretrain/text_document")
    return ws


@pytest.fixture(scope="module")
def meg(ws):
    from inference.backends import MegatronBackend

    return MegatronBackend(ws / "models/gpt-oss-tiny/megatron")


@pytest.fixture(scope="module")
def hf(ws):
    from inference.backends import HFBackend

    return HFBackend(ws / "models/gpt-oss-tiny/hf")


@pytest.fixture(scope="module")
def prompts():
    enc = encoding()
    code = enc.encode(
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    )
    rand = torch.randint(0, 199_998, (17,), generator=torch.Generator().manual_seed(7)).tolist()
    assert len(code) > 3 * TINY.sliding_window and len(rand) > 2 * TINY.sliding_window
    return [code, rand]


# ---- generation: Megatron == HF export -----------------------------------------------------------


def test_greedy_tokens_megatron_equal_its_hf_export(meg, hf, prompts):
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    from_meg = generate(meg, prompts, params)
    from_hf = generate(hf, prompts, params)
    for a, b in zip(from_meg, from_hf):
        assert len(a.tokens) == NEW_TOKENS and a.finish_reason == "length"
        assert a.tokens == b.tokens
    assert from_meg[0].tokens != from_meg[1].tokens
    # batching (left padding + KV cache on HF, right padding on Megatron) changes nothing
    for p, g in zip(prompts, from_hf):
        assert generate(hf, [p], params)[0].tokens == g.tokens
    seq = prompts[0] + from_hf[0].tokens
    diff = (meg.next_token_logits([seq]) - hf.next_token_logits([seq])).abs().max()
    assert diff < 1e-3, diff


def test_mxfp4_export_is_dequantized_on_load(ws, meg, prompts):
    from conversion.hf_io import HFCheckpoint
    from inference.backends import HFBackend

    assert HFCheckpoint(ws / "models/gpt-oss-tiny/hf-mxfp4").is_mxfp4
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    mx = HFBackend(ws / "models/gpt-oss-tiny/hf-mxfp4")
    assert [g.tokens for g in generate(mx, prompts, params)] == [g.tokens for g in generate(meg, prompts, params)]


def test_sampling_is_reproducible_per_seed_and_backend(meg, hf, prompts):
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    first = [g.tokens for g in generate(hf, prompts, params)]
    assert first == [g.tokens for g in generate(hf, prompts, params)]
    assert first == [g.tokens for g in generate(meg, prompts, params)]
    other = [g.tokens for g in generate(hf, prompts, SamplingParams(**{**params.__dict__, "seed": 4}))]
    assert other != first
    greedy = [g.tokens for g in generate(hf, prompts, SamplingParams(max_new_tokens=NEW_TOKENS))]
    assert first != greedy  # it did sample
    # a prompt's sample does not depend on its batch neighbours
    assert generate(hf, [prompts[0]], params, seeds=[params.seed * 1_000_003])[0].tokens == first[0]


def test_top_k_1_equals_greedy(hf, prompts):
    greedy = generate(hf, prompts, SamplingParams(max_new_tokens=NEW_TOKENS))
    top1 = generate(hf, prompts, SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.5, top_k=1, seed=9))
    assert [g.tokens for g in top1] == [g.tokens for g in greedy]


def test_stop_tokens_and_stop_strings_stop(hf, prompts):
    full = generate(hf, prompts[:1], SamplingParams(max_new_tokens=NEW_TOKENS))[0]
    stop = full.tokens[4]
    first = full.tokens.index(stop)
    g = generate(hf, prompts[:1], SamplingParams(max_new_tokens=NEW_TOKENS, stop_token_ids=(stop,)))[0]
    assert g.finish_reason == "stop_token" and g.tokens == full.tokens[: first + 1]
    text = full.text
    needle = text[len(text) // 2 : len(text) // 2 + 3]
    g = generate(hf, prompts[:1], SamplingParams(max_new_tokens=NEW_TOKENS, stop_strings=(needle,)))[0]
    assert g.finish_reason == "stop_string" and g.text == text[: text.index(needle)]
    assert len(g.tokens) < NEW_TOKENS


def test_streaming_emits_the_text(hf, prompts):
    chunks: dict[int, list[str]] = {0: [], 1: []}
    gens = generate(hf, prompts, SamplingParams(max_new_tokens=NEW_TOKENS), on_text=lambda i, c: chunks[i].append(c))
    for i, g in enumerate(gens):
        assert "".join(chunks[i]) == g.text and len(chunks[i]) > 1
        assert g.text == encoding().decode(g.tokens)


# ---- harmony chat ------------------------------------------------------------------------------------


def test_chat_rendering_equals_openai_harmony():
    encoding()  # points openai_harmony at the offline tiktoken files
    import openai_harmony as h

    ids = chat.render_chat("What is 2+2?", reasoning_effort="high", developer="Answer briefly.")
    enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
    conv = h.Conversation.from_messages(
        [
            h.Message.from_role_and_content(
                h.Role.SYSTEM, h.SystemContent.new().with_reasoning_effort(h.ReasoningEffort.HIGH)
            ),
            h.Message.from_role_and_content(
                h.Role.DEVELOPER, h.DeveloperContent.new().with_instructions("Answer briefly.")
            ),
            h.Message.from_role_and_content(h.Role.USER, "What is 2+2?"),
        ]
    )
    assert ids == enc.render_conversation_for_completion(conv, h.Role.ASSISTANT)
    # the special tokens at their real ids
    start, end, message = SPECIAL["<|start|>"], SPECIAL["<|end|>"], SPECIAL["<|message|>"]
    assert (start, end, message) == (200006, 200007, 200008)
    assert ids.count(start) == 4 and ids.count(end) == 3 and ids.count(message) == 3
    assert ids[-2:] == [start, *encoding().encode_ordinary("assistant")]
    assert "Reasoning: high" in encoding().decode(ids)
    assert set(chat.chat_stop_ids()) == {200002, 200012} == set(enc.stop_tokens_for_assistant_actions())


def test_parse_completion():
    enc = encoding()
    text = "<|channel|>analysis<|message|>2+2 is 4.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>"
    msgs = chat.parse_completion(enc.encode(text, allowed_special="all"))
    assert [(m.channel, m.content) for m in msgs] == [("analysis", "2+2 is 4."), ("final", "4")]
    assert chat.final_text(enc.encode("<|channel|>analysis<|message|>unfinished", allowed_special="all")) == ""
    assert chat.final_text(enc.encode("plain answer<|return|>", allowed_special="all")) == "plain answer"


# ---- validation loss ---------------------------------------------------------------------------------


def test_validation_loss_equals_an_independent_cross_entropy(ws, meg, hf):
    from conversion.hf_io import HFCheckpoint
    from conversion.validate import hf_logits
    from inference.loss import validation_loss

    prefix = str(ws / "data/pretrain/text_document")
    seq = 16
    # independent: re-tokenize the validation documents of split 90,5,5 (documents 54..56 of 60)
    enc = encoding()
    docs = [enc.encode_ordinary(CORPUS[i % len(CORPUS)] * 4) + [EOD_ID] for i in range(54, 57)]
    tokens = np.concatenate(docs)
    n = (len(tokens) - 1) // seq
    windows = torch.tensor(np.stack([tokens[i * seq : i * seq + seq + 1] for i in range(n)]))
    logits = hf_logits(HFCheckpoint(ws / "models/gpt-oss-tiny/src-hf"), windows[:, :-1])
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
    ).item()

    for backend in (meg, hf):
        r = validation_loss(
            backend, prefix, seq, split="90,5,5", split_name="validation", max_tokens=None, batch_size=2
        )
        assert (r.documents, r.windows, r.tokens) == (3, n, n * seq)
        assert r.loss == pytest.approx(expected, abs=1e-4), backend.name
        assert r.perplexity == pytest.approx(np.exp(expected), rel=1e-3)
    whole = validation_loss(meg, prefix, seq, max_tokens=64)
    assert whole.documents == 60 and whole.tokens == 64
    with pytest.raises(ValueError, match="make the dataset with"):
        validation_loss(meg, str(ws / "data/none/text_document"), seq)


# ---- checkpoints of training runs ------------------------------------------------------------------------


def test_training_checkpoint_without_sidecar_uses_its_run_config(ws, meg, prompts):
    """A run still in progress has no kit sidecar yet: the architecture comes from run_config.yaml."""
    from inference.backends import MegatronBackend

    run = ws / "checkpoints/in-progress"
    shutil.copytree(ws / "models/gpt-oss-tiny/megatron", run)
    shutil.rmtree(run / "hf")
    (run / "kit_conversion.json").unlink()
    it = (run / "latest_checkpointed_iteration.txt").read_text().strip()
    import recipes

    # the run_config.yaml a training run of the tiny recipe writes (the bridge's own ConfigContainer.to_yaml)
    recipes.build("gpt_oss_tiny_pretrain").to_yaml(str(run / f"iter_{int(it):07d}/run_config.yaml"))
    backend = MegatronBackend(run)
    params = SamplingParams(max_new_tokens=4)
    assert generate(backend, prompts, params)[0].tokens == generate(meg, prompts, params)[0].tokens


LORA_SCRIPT = """
import sys
if __name__ == "__main__":
    import recipes
    from recipes.run import train
    # The tiny LoRA recipe trains on packed SFT data, which needs Transformer Engine's attention;
    # on CPU the adapters are trained on the pretraining corpus instead. The checkpoint format
    # (adapters only + run_config.yaml naming the base) is the same.
    cfg = recipes.build("gpt_oss_tiny_lora", ["train.train_iters=3", "checkpoint.save_interval=3"])
    cfg.dataset = recipes.build("gpt_oss_tiny_pretrain", []).dataset
    cfg.dataset.num_workers = 0  # no data-loader processes (each one re-imports Megatron)
    cfg.validation.eval_iters = 0  # no validation/test passes after training
    sys.exit(train(cfg, "gpt_oss_tiny_lora"))
"""


@pytest.fixture(scope="module")
def lora_run(ws):
    script = ws / "train_lora.py"
    script.write_text(LORA_SCRIPT)
    env = {
        **os.environ,
        "WORKSPACE": str(ws),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": _free_port(),
    }
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = ws / "checkpoints/gpt-oss-tiny-lora"
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    return run


@pytest.mark.training
def test_lora_run_loads_with_its_base_and_merges(lora_run, meg, prompts):
    from inference.backends import MegatronBackend

    lora = MegatronBackend(lora_run)
    assert "LoRA on" in lora.name
    ids = torch.tensor([prompts[0]])
    base_logits, lora_logits = meg.forward(ids), lora.forward(ids)
    assert (lora_logits - base_logits).abs().max() > 1e-2, "the trained adapters change nothing?"
    merged = MegatronBackend(lora_run, merge=True)
    assert merged.lora_merged == 2 * (2 + 2 * TINY.num_experts)  # per layer: qkv, proj, fc1/fc2 of each expert
    assert (merged.forward(ids) - lora_logits).abs().max() < 1e-4
    params = SamplingParams(max_new_tokens=6)
    assert generate(lora, prompts, params)[0].tokens == generate(merged, prompts, params)[0].tokens


@pytest.mark.training
def test_lora_without_its_base_names_what_is_missing(lora_run, tmp_path):
    from inference.backends import CheckpointError, MegatronBackend

    with pytest.raises(CheckpointError, match=r"is a LoRA run; its base checkpoint .*nope does not exist: pass --base"):
        MegatronBackend(lora_run, base=tmp_path / "nope")


# ---- CLI ---------------------------------------------------------------------------------------------------


def test_cli_generate(ws, hf, prompts, tmp_path, capsys):
    from inference.__main__ import main

    prompt_text = encoding().decode(prompts[0])
    (tmp_path / "prompts.jsonl").write_text(
        json.dumps({"prompt": prompt_text}) + "\n" + json.dumps({"prompt": "Hello"}) + "\n"
    )
    out = tmp_path / "gen.jsonl"
    rc = main(["generate", str(ws / "models/gpt-oss-tiny/megatron"), "--prompts-file", str(tmp_path / "prompts.jsonl"),
               "--max-new-tokens", str(NEW_TOKENS), "--out", str(out)])  # fmt: skip
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["tokens"] == generate(hf, prompts[:1], SamplingParams(max_new_tokens=NEW_TOKENS))[0].tokens
    assert rows[0]["command"].startswith("python -m inference generate ")
    capsys.readouterr()
    # chat mode, one prompt: streamed to the terminal
    rc = main(["generate", str(ws / "models/gpt-oss-tiny/hf"), "--mode", "chat", "--prompt", "Hi", "--max-new-tokens", "5",
               "--temperature", "0.8", "--seed", "1"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0 and "--- final answer ---" in captured.out
    assert main(["generate", str(ws / "models/gpt-oss-tiny/hf"), "--prompt", "x", "--tp", "2"]) == 2
    assert "--tp/--pp/--ep apply to Megatron checkpoints only" in capsys.readouterr().err
    assert main(["generate", str(ws / "models/gpt-oss-tiny/megatron"), "--prompt", "x", "--ep", "3"]) == 2
    assert "experts 4 not divisible by EP=3" in capsys.readouterr().err
    assert main(["generate", str(ws / "models/gpt-oss-tiny/megatron"), "--prompt", "x", "--tp", "2"]) == 2
    # check_layout says it where torch.distributed is up (as in this test process), the backend otherwise
    assert re.search(r"multiple of (TP\*PP\*EP=2|2 processes)", capsys.readouterr().err)


@pytest.mark.slow  # torchrun ranks: about 40 s each on 2 cores
@pytest.mark.parametrize("layout", [("--pp", "2"), ("--tp", "2")], ids=["pp2", "tp2"])
def test_model_parallel_under_torchrun_gives_the_same_tokens(ws, hf, prompts, tmp_path, layout):
    """Two ranks (gloo on CPU). PP=2: the layer stages pass hidden states with send/recv and the last
    stage broadcasts the logits. TP=2: attention split by heads, experts whole on every rank (expert
    TP 1). Either way the greedy tokens equal the single-process HF export's."""
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": encoding().decode(prompts[0])}) + "\n")
    out = tmp_path / "pp.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _free_port(),
           "-m", "inference", "generate", str(ws / "models/gpt-oss-tiny/megatron"), *layout,
           "--prompts-file", str(tmp_path / "p.jsonl"), "--max-new-tokens", str(NEW_TOKENS), "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1  # rank 0 alone writes
    assert rows[0]["tokens"] == generate(hf, prompts[:1], SamplingParams(max_new_tokens=NEW_TOKENS))[0].tokens
    assert rows[0]["command"].startswith("torchrun --nproc-per-node N python -m inference generate")
