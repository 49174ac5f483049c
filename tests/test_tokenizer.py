"""The real o200k_harmony tokenizer, offline: tiktoken and the generated HF tokenizer agree."""

from __future__ import annotations

import pytest

from gptoss import tokenizer as tk

SAMPLES = [
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "  \t indented\r\nwindows line\n\n\n",
    "unicode: naïve café 日本語 🙂 \u200b",
    "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
    "",
]


def test_vocab_and_special_ids_are_tiktoken_s():
    enc = tk.encoding()
    assert enc.name == "o200k_harmony"
    assert enc.n_vocab == 201_088
    for token, i in tk.SPECIAL.items():
        assert enc.encode(token, allowed_special="all") == [i], token
    assert tk.EOD_ID == 199_999


def test_base_file_is_the_published_o200k():
    import hashlib

    data = (tk.tiktoken_dir() / "o200k_base.tiktoken").read_bytes()
    assert hashlib.sha256(data).hexdigest() == tk.O200K_BASE_SHA256


@pytest.mark.parametrize("text", SAMPLES)
def test_hf_tokenizer_equals_tiktoken(text):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tk.hf_tokenizer_dir()))
    ids = tk.encoding().encode(text, allowed_special="all")
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == text
    assert len(hf) == 201_088


def test_fingerprint_mismatch_is_an_error():
    fp = tk.fingerprint()
    assert fp.startswith("o200k_harmony-201088-")
    tk.check_fingerprint(fp, "dataset x")  # no error
    with pytest.raises(tk.TokenizerMismatchError, match="dataset x was made with tokenizer 'gpt2-50257'"):
        tk.check_fingerprint("gpt2-50257", "dataset x")
    with pytest.raises(tk.TokenizerMismatchError):
        tk.check_fingerprint(None, "checkpoint y")


def test_cache_is_rebuilt_in_a_fresh_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTOSS_KIT_CACHE", str(tmp_path))
    d = tk.tiktoken_dir()
    assert d.parent == tmp_path and (d / "o200k_base.tiktoken").stat().st_size > 3_000_000
    assert not list(d.glob(".*")), "no temporary files left behind"
