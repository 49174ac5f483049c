"""Any HF causal LM through the same harness as gpt-oss: tiny random GPTBigCode (StarCoder),
Starcoder2 and Llama models built here, each with a tokenizer of its own trained here with the
`tokenizers` library (byte-level BPE like StarCoder's; sentencepiece-style BPE with byte fallback
like Llama's). Nothing comes from a hub. The reference is transformers' own greedy `generate` and
`tokenizer.decode`."""

from __future__ import annotations

import json

import pytest
import torch

from inference.problems import load

ARCHS = ("gpt_bigcode", "starcoder2", "llama")


def _corpus() -> list[str]:
    return [p.prompt + p.canonical_solution for p in load("humaneval")]


def byte_level_tokenizer():
    """StarCoder-style: byte-level BPE, <|endoftext|> as EOS, no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def sentencepiece_style_tokenizer():
    """Llama-style: "▁" for spaces, <0xNN> byte fallback for what the vocabulary lacks, <s> BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"])
    base.train_from_iterator(_corpus(), trainer)
    spec = json.loads(base.to_str())
    vocab = dict(spec["model"]["vocab"])
    for b in range(256):  # the byte-fallback pieces, as in Llama's vocabulary
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = base.normalizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build(arch: str, out) -> str:
    from transformers import AutoModelForCausalLM, GPTBigCodeConfig, LlamaConfig, Starcoder2Config

    torch.manual_seed(0)
    tok = sentencepiece_style_tokenizer() if arch == "llama" else byte_level_tokenizer()
    v = len(tok)
    common = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "gpt_bigcode":
        cfg = GPTBigCodeConfig(vocab_size=v, n_positions=1024, n_embd=64, n_layer=2, n_head=4, multi_query=True, **common)
    elif arch == "starcoder2":
        cfg = Starcoder2Config(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, **common)  # fmt: skip
    else:
        cfg = LlamaConfig(vocab_size=v + 7, hidden_size=64, intermediate_size=128, num_hidden_layers=2,  # a padded vocabulary
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, **common)  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # random weights sharp enough that greedy decoding is not a near tie
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module", params=ARCHS)
def model_dir(request, tmp_path_factory):
    return request.param, build(request.param, tmp_path_factory.mktemp(request.param))


def test_greedy_tokens_equal_transformers_generate(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.backends import AutoLMBackend, load_backend
    from inference.sampling import SamplingParams, generate

    arch, path = model_dir
    backend = load_backend(path, device="cpu")
    assert isinstance(backend, AutoLMBackend) and backend.model_type == arch and not backend.codec.harmony
    ref_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    problems = load("humaneval")
    prompts = [problems[0].prompt, problems[7].prompt[:200], "def add(a, b):\n    "]
    ids = [backend.codec.encode(p) for p in prompts]
    assert ids[0] == tok(prompts[0])["input_ids"]
    if arch == "llama":
        assert ids[0][0] == tok.bos_token_id
    n = 12
    gens = generate(backend, ids, SamplingParams(max_new_tokens=n), decode=backend.codec.decode_bytes)  # one batch
    for prompt_ids, g in zip(ids, gens):
        with torch.no_grad():
            ref = ref_model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(prompt_ids) :].tolist()
        assert g.tokens == ref[: len(g.tokens)] and len(g.tokens) == n, (arch, g.tokens, ref)
        raw = backend.codec.decode_bytes(g.tokens)
        assert g.text == raw.decode("utf-8", errors="replace")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a random model's stray bytes: U+FFFD counts differ between decoders, not the bytes
        # the text the harness sees is exactly what the model's own tokenizer decodes
        full = tok.decode(prompt_ids + g.tokens, skip_special_tokens=True)
        assert full == tok.decode(prompt_ids, skip_special_tokens=True) + g.text, (arch, full)


def test_byte_pieces_decode_exactly(model_dir):
    """Text outside the training corpus (accents, CJK, emoji): byte-level pieces and <0xNN>
    fallback pieces turn back into the very bytes the tokenizer encoded."""
    from inference.codec import HFTokenizerCodec

    arch, path = model_dir
    codec = HFTokenizerCodec(path)
    text = "def café():\n    return '漢字 🎉'\n"
    ids = [i for i in codec.encode(text) if i not in codec.tokenizer.all_special_ids]  # no BOS
    got = codec.decode_bytes(ids).decode()
    assert got.lstrip(" ") == text if arch == "llama" else got == text, (arch, got)
    if arch == "llama":
        assert any(codec.tokenizer.convert_ids_to_tokens(i).startswith("<0x") for i in ids)  # fallback exercised


def test_cli_generate_and_eval_code(model_dir, tmp_path, monkeypatch, capsys):
    from inference.__main__ import main
    from inference.sandbox import probe_namespaces

    arch, path = model_dir
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    out = tmp_path / "gen.jsonl"
    assert main(["generate", path, "--prompt", "def f(x):", "--max-new-tokens", "6", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert len(rec["tokens"]) >= 1 and isinstance(rec["completion"], str)
    assert main(["generate", path, "--mode", "chat", "--prompt", "hi"]) == 2
    assert "use --mode raw" in capsys.readouterr().err
    if probe_namespaces() is not None:
        pytest.skip(f"namespaces unavailable: {probe_namespaces()}")
    args = ["eval", "code", path, "--problems", "humaneval", "--limit", "2", "--max-new-tokens", "16", "--label", arch]
    assert main(args) == 0
    r = json.loads((tmp_path / f"ws/results/{arch}/eval_code.json").read_text())
    assert [p["task_id"] for p in r["problems"]] == ["HumanEval/0", "HumanEval/1"]
    assert r["model_type"] == arch and r["mode"] == "raw" and r["problems"][0]["statuses"][0] in ("failed", "timeout")
    assert all("\ndef " not in p["completions"][0] for p in r["problems"])  # HumanEval's stops applied
    # a MultiPL-E row (JavaScript): generated to its own stop tokens, run by node with its tests
    from test_multiple import _js_rows

    from inference import multiple

    if multiple.missing_toolchain(multiple.language("js")):
        pytest.skip(multiple.missing_toolchain(multiple.language("js")))
    rows = _js_rows()[:1]
    (tmp_path / "js.jsonl").write_text(json.dumps(rows[0]) + "\n")
    args = ["eval", "code", path, "--problems", str(tmp_path / "js.jsonl"), "--max-new-tokens", "16", "--label", "js"]
    assert main(args) == 0
    r = json.loads((tmp_path / "ws/results/js/eval_code.json").read_text())
    (p,) = r["problems"]
    assert r["languages"] == ["js"] and p["task_id"] == "HumanEval_0_add"
    assert not any(stop in p["completions"][0] for stop in rows[0]["stop_tokens"])
    # random weights write no valid body: node ran the program and it failed (a syntax error or an assertion)
    assert p["statuses"] == ["failed"] and p["errors"][0].startswith("exit status"), p["errors"]


def test_not_a_causal_lm_is_a_clear_error(tmp_path, capsys):
    from inference.__main__ import main

    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["generate", str(d), "--prompt", "x"]) == 2
    assert "no tokenizer beside the weights" in capsys.readouterr().err
