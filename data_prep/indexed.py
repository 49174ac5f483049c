"""Megatron's indexed dataset index (<prefix>.idx), written with numpy: no megatron-core import.

A data-prep worker only appends token ids to a .bin; the .idx is written once the documents to keep
are known. Importing megatron.core (and torch, and its Transformer Engine / Apex probes) took ~8 s
per worker for these few lines. The layout is megatron.core.datasets.indexed_dataset._IndexWriter's
(tests read the result back with megatron-core's IndexedDataset):

    b"MMIDIDX\\x00\\x00"  <Q 1  <B dtype code  <Q sequences  <Q documents
    int32 lengths[sequences]  int64 byte pointers[sequences]  int64 document_indices[documents]

Pointers are byte offsets into the .bin and need not be contiguous: a document left out of the
index (a duplicate found after it was written) stays in the .bin, unreferenced.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from kit.fs import atomic_file

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(np.int32): 4}  # megatron's DType enum; the kit writes int32 token ids only


def write_index(path: str | os.PathLike, lengths: np.ndarray, pointers: np.ndarray, dtype=np.int32) -> None:
    """<prefix>.idx for one document per sequence (pretraining text), written atomically."""
    n = len(lengths)
    if len(pointers) != n:
        raise ValueError(f"{path}: {n} lengths but {len(pointers)} pointers")
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(HEADER)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[np.dtype(dtype)]))
        f.write(struct.pack("<Q", n))
        f.write(struct.pack("<Q", n + 1))
        f.write(np.asarray(lengths, dtype="<i4").tobytes())
        f.write(np.asarray(pointers, dtype="<i8").tobytes())
        f.write(np.arange(n + 1, dtype="<i8").tobytes())


def read_index(path: str | os.PathLike) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray]:
    """(token dtype, lengths, byte pointers, document indices) of an .idx in the layout above."""
    with open(path, "rb") as f:
        head = f.read(len(HEADER) + 8 + 1 + 8 + 8)
        if head[: len(HEADER)] != HEADER:
            raise ValueError(f"{path}: not a Megatron indexed-dataset index (header {head[:9]!r})")
        (code,) = struct.unpack("<B", head[len(HEADER) + 8 : len(HEADER) + 9])
        n, docs = struct.unpack("<QQ", head[len(HEADER) + 9 :])
        lengths = np.frombuffer(f.read(4 * n), dtype="<i4")
        pointers = np.frombuffer(f.read(8 * n), dtype="<i8")
        doc_index = np.frombuffer(f.read(8 * docs), dtype="<i8")
    dtype = {c: d for d, c in DTYPE_CODES.items()}.get(code)
    if dtype is None:
        raise ValueError(f"{path}: token dtype code {code}; the kit reads int32 (code 4) only")
    return dtype, lengths, pointers, doc_index
