"""A small repetitive indexed dataset for training tests, written with megatron-core's own builder
and the real tokenizer (data_prep has its own tests; this keeps the training tests independent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def mul(a, b):\n    return a * b\n",
    "for i in range(10):\n    print(add(i, i))\n",
    "The quick brown fox jumps over the lazy dog.\n",
]


def write_indexed_dataset(prefix: Path, repeats: int = 60) -> Path:
    from megatron_cpu.compat import import_bridge

    import_bridge()
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from gptoss.tokenizer import EOD_ID, encoding, fingerprint

    prefix.parent.mkdir(parents=True, exist_ok=True)
    enc = encoding()
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    for i in range(repeats):
        doc = CORPUS[i % len(CORPUS)] * 4
        tokens = np.array(enc.encode_ordinary(doc) + [EOD_ID], dtype=np.int32)
        builder.add_document(tokens, [len(tokens)])
    builder.finalize(str(prefix) + ".idx")
    # the key data_prep writes
    (prefix.parent / "manifest.json").write_text(json.dumps({"tokenizer": fingerprint()}))
    return prefix
