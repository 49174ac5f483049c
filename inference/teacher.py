"""`generate --out FILE`: generations as JSONL that a killed run continues, and the run's manifest.

This is how any model becomes a teacher (sequence-level distillation, data_prep/teacher.py): its
completions of prompts built from the corpus are written here, row by row, and `data_prep pretrain`
(field `content`) or `data_prep sft` (field `messages`) read the file as it is.

- Every row has a `key`, "<prompt id>:<sample>" (the prompt's `id` from the prompts file, else its
  position), unique in the file.
- Rows are appended and flushed one batch at a time. A rerun of the same command skips the keys
  already in the file, so a killed run continues without duplicating rows; a last line torn by the
  kill is cut off first. Seeds depend on the prompt and sample only, so the rows a resumed run
  writes are those an uninterrupted run would have written.
- FILE.manifest.json (written atomically after every batch) records the teacher (checkpoint or
  endpoint and model), the sampling settings, the prompts (their checksum, and the manifest of
  `data_prep prompts` when they came from it) and the command. Its `plan` must match for a rerun
  to continue the file; `--overwrite` starts over (only on a file that has such a manifest: never
  one the kit did not write).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from data_prep.teacher import GENERATE_KIND, generation_manifest_path
from kit.fs import write_text_atomic


def row_key(prompt_id: str, sample: int) -> str:
    return f"{prompt_id}:{sample}"


class GenerationLog:
    """The rows already in `path` (their keys), and appending more; `writer`: this process writes
    (rank 0), the others only read which keys are done so that every rank runs the same batches.
    Subclasses name another kind of file (`inference score --out`: inference/score.py)."""

    KIND = GENERATE_KIND
    COMMAND = "inference generate --out"
    HEADLINE = ("teacher", "sampling", "mode")  # plan fields repeated at the manifest's top level
    ROWS = "generations"

    def __init__(self, path: str | os.PathLike, plan: dict[str, Any], *, overwrite: bool, writer: bool) -> None:
        self.path = Path(path)
        self.manifest_path = generation_manifest_path(self.path)
        self.plan = plan
        self.writer = writer
        self.done: set[str] = set()
        old = self._old_manifest()
        if old is not None and overwrite:
            if writer:
                self.path.unlink(missing_ok=True)
                self.manifest_path.unlink(missing_ok=True)
            old = None
        elif self.path.exists() and self.path.stat().st_size and old is None:
            raise ValueError(
                f"{self.path} exists and was not written by `{self.COMMAND}` (no {self.manifest_path.name} "
                "beside it): choose another --out, or move the file away yourself"
            )
        if old is not None:
            before = old.get("plan") or {}
            if before != plan:
                diff = sorted(k for k in {*plan, *before} if plan.get(k) != before.get(k))
                raise ValueError(
                    f"{self.path} holds {self.ROWS} of another run (different {', '.join(diff)}; see "
                    f"{self.manifest_path}): use another --out, or --overwrite to start over"
                )
            self.done = self._read_keys()
        self.previous = old or {}  # kept fields (the backend, say) that a rerun with nothing to do does not learn

    def _old_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        try:
            m = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.manifest_path}: not JSON ({e}); move it and {self.path.name} away") from None
        if not isinstance(m, dict) or m.get("kind") != self.KIND:
            raise ValueError(f"{self.manifest_path} is not a manifest of `{self.COMMAND}`: choose another --out")
        return m

    def _read_keys(self) -> set[str]:
        """Keys of the complete rows; a torn last line (no newline: the run was killed while
        writing it) is cut off by the writer and not counted by anyone."""
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and self.writer:
            with self.path.open("r+b") as f:
                f.truncate(end)
        keys: set[str] = set()
        for n, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                key = json.loads(line)["key"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(
                    f"{self.path}:{n}: not a row of `{self.COMMAND}` (no JSON with a key): the file is damaged; "
                    "--overwrite starts over"
                ) from None
            keys.add(key)
        return keys

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write `rows` (one flush and fsync for the batch) and refresh the manifest's count."""
        if not self.writer or not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.done.update(r["key"] for r in rows)

    def write_manifest(self, info: dict[str, Any], total: int) -> None:
        """The manifest: the plan, `info` (teacher details, command), rows done of `total`."""
        if not self.writer:
            return
        m = {
            **self.previous,
            **info,
            "kind": self.KIND,
            "plan": self.plan,
            **{k: self.plan[k] for k in self.HEADLINE},
            "rows": len(self.done),
            "rows_expected": total,
            "complete": len(self.done) >= total,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_text_atomic(self.manifest_path, json.dumps(m, indent=1, sort_keys=True) + "\n")
