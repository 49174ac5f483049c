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
