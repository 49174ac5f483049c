"""Text <-> token ids for each kind of model, one interface (`Codec`) for the sampling loop, code
evaluation and the endpoint client:

- `KitCodec`: gpt-oss, the kit's offline o200k_harmony tokenizer (gptoss.tokenizer); raw prompts
  honour special tokens written out; harmony chat rendering is available (`harmony = True`).
- `HFTokenizerCodec`: any other causal LM, with the tokenizer saved beside its weights
  (transformers' AutoTokenizer, local files only). Raw completion only. Tokens are turned back
  into their exact bytes (byte-level BPE as in StarCoder/StarCoder2, or sentencepiece-style
  "▁" pieces with <0xNN> byte fallback as in Llama-family coders), so streaming and stop strings
  see the same text as `tokenizer.decode`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Protocol

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class Codec(Protocol):
    harmony: bool  # True: gpt-oss's harmony chat format is available (--mode chat)
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...

    def raw_stop_ids(self) -> tuple[int, ...]: ...


class KitCodec:
    harmony = True
    name = "o200k_harmony (kit)"

    def encode(self, text: str) -> list[int]:
        from gptoss.tokenizer import encoding

        return encoding().encode(text, allowed_special="all")

    def decode_bytes(self, ids: list[int]) -> bytes:
        from gptoss.tokenizer import encoding

        return encoding().decode_bytes(ids)

    def raw_stop_ids(self) -> tuple[int, ...]:
        from inference import chat

        return chat.raw_stop_ids()


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (the table every ByteLevel BPE uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class HFTokenizerCodec:
    harmony = False

    def __init__(self, path: str | os.PathLike) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.name = f"{type(self.tokenizer).__name__} ({path})"
        self._special = set(self.tokenizer.all_special_ids)
        self._byte_level = self._is_byte_level()
        self._cache: dict[int, bytes] = {}

    def _is_byte_level(self) -> bool:
        backend: Any = getattr(self.tokenizer, "backend_tokenizer", None) or getattr(self.tokenizer, "_tokenizer", None)
        if backend is None:
            return False
        decoder = json.loads(backend.to_str()).get("decoder") or {}
        parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
        return any(d.get("type") == "ByteLevel" for d in parts)

    def encode(self, text: str) -> list[int]:
        # the tokenizer's own defaults (a BOS for Llama-family tokenizers, none for StarCoder's), as
        # transformers and bigcode-evaluation-harness prompt these models
        return list(self.tokenizer(text)["input_ids"])

    def _token_bytes(self, i: int) -> bytes:
        b = self._cache.get(i)
        if b is not None:
            return b
        piece = self.tokenizer.convert_ids_to_tokens(i)
        if piece is None:  # an id past the tokenizer's vocabulary (models pad their embedding)
            b = b""
        elif i in self._special or i in getattr(self.tokenizer, "added_tokens_decoder", {}):
            b = self.tokenizer.decode([i]).encode()
        elif self._byte_level:
            table = _byte_decoder()
            b = bytes(table[c] for c in piece) if all(c in table for c in piece) else piece.encode()
        else:
            m = _BYTE_PIECE.fullmatch(piece)
            b = bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode()
        self._cache[i] = b
        return b

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self._token_bytes(int(i)) for i in ids)

    def raw_stop_ids(self) -> tuple[int, ...]:
        eos = self.tokenizer.eos_token_id
        return () if eos is None else (int(eos),)


def codec_of(backend: object) -> Codec:
    """The backend's codec; the kit's for backends that do not say (gpt-oss ones)."""
    return getattr(backend, "codec", None) or KitCodec()
