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


def write_code_corpus(root: Path, files: int = 6, docs: int = 30) -> list[str]:
    """`files` JSONL files of Stack-like rows (content, lang) under `root`, with exact duplicates
    within a file, between neighbouring files and between the first and the last file (so that
    an array of tasks meets copies across its tasks' shares). Returns the paths, sorted."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        rows = [f"def f_{f}_{i}(x):\n    return x * {i} + {f}  # {'pad ' * (i % 5)}\n" for i in range(docs)]
        rows.append(rows[3])  # within the file
        if f:
            rows.append(f"def f_{f - 1}_7(x):\n    return x * 7 + {f - 1}  # {'pad ' * 2}\n")  # the previous file's
        if f == files - 1:
            rows.append("def f_0_1(x):\n    return x * 1 + 0  # pad \n")  # the first file's
        path = root / f"part_{f:03d}.jsonl"
        path.write_text("".join(json.dumps({"content": r, "lang": "Python"}) + "\n" for r in rows))
        paths.append(str(path))
    return paths
