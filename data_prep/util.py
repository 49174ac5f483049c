"""Small shared helpers: checksums, deterministic JSON, drop statistics (atomic writes: kit.fs)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_EXAMPLES = 5  # locations kept per drop reason: enough to find the problem, small in the manifest


def dump_json(obj: Any) -> str:
    # Sorted keys and fixed separators: the same content always gives the same bytes.
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class DropStats:
    """Counts of dropped documents (and their bytes) by reason, with the first locations seen."""

    def __init__(self) -> None:
        self.by_reason: dict[str, dict[str, Any]] = {}

    def add(self, reason: str, nbytes: int, loc: str | None, docs: int = 1) -> None:
        r = self.by_reason.setdefault(reason, {"docs": 0, "bytes": 0, "examples": []})
        r["docs"] += docs
        r["bytes"] += nbytes
        if loc is not None and len(r["examples"]) < MAX_EXAMPLES:
            r["examples"].append(loc)

    def merge(self, other: dict[str, dict[str, Any]]) -> None:
        for reason, r in other.items():
            mine = self.by_reason.setdefault(reason, {"docs": 0, "bytes": 0, "examples": []})
            mine["docs"] += r["docs"]
            mine["bytes"] += r["bytes"]
            room = MAX_EXAMPLES - len(mine["examples"])
            mine["examples"].extend(r["examples"][:room])

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: self.by_reason[k] for k in sorted(self.by_reason)}
