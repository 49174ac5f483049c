"""Reading raw corpora: JSONL (plain, .gz, .zst) and parquet shards, as ordered work units.

A *unit* is the smallest piece of input that one worker processes: a whole JSONL file (compressed
streams cannot be split without reading them) or one parquet row group. Units are listed in a fixed
order (sorted paths, then row groups), so everything built on them is independent of how many
workers run.

`read_unit` never raises on bad data: every record comes out as a `Record` whose `error` names the
reason (bad_json, bad_utf8, missing_column, not_text, unreadable_file) and whose `loc` says where
(file:line for JSONL, file:row for parquet), so callers can count and report it.
"""

from __future__ import annotations

import glob
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".jsonl.zstd")
PARQUET_SUFFIXES = (".parquet", ".pq")

# The Stack's metadata columns that filters may use; read when present, ignored otherwise.
META_COLUMNS = (
    "lang",
    "ext",
    "size",
    "max_stars_repo_path",
    "max_stars_repo_licenses",
    "avg_line_length",
    "max_line_length",
    "alphanum_fraction",
)


@dataclass(frozen=True)
class Unit:
    """One piece of work: a JSONL file (part 0) or one row group of a parquet file."""

    path: str
    kind: str  # "jsonl" | "parquet"
    part: int = 0
    rows: int = -1  # parquet rows in this row group (-1: unknown, JSONL)
    size: int = 0  # bytes of input this unit reads, for scheduling and progress (estimate for parquet)

    @property
    def name(self) -> str:
        return f"{self.path}#{self.part}" if self.kind == "parquet" else self.path


@dataclass
class Record:
    index: int  # position inside the unit, counting bad records too (keeps indices stable)
    loc: str  # file:line or file:row, for error reports
    line: int = 0  # the number in `loc` (JSONL line, parquet row), kept for reports made later
    text: str | None = None
    data: bytes = b""  # the text as UTF-8 (encoded once, shared by filters, hashing and redaction)
    key: str | None = None  # which of the text keys held the text (mixed inputs: content, text)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    nbytes: int = 0  # raw size of the record (bytes of the line / UTF-8 text)


def kind_of(path: str) -> str:
    low = path.lower()
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise ValueError(
        f"{path}: unknown input format; expected one of {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)} "
        "(rename the file or convert it)"
    )


def expand_inputs(patterns: list[str]) -> list[str]:
    """Expand globs and directories into a sorted, de-duplicated list of input files."""
    files: set[str] = set()
    for pat in patterns:
        if os.path.isdir(pat):
            for root, _, names in os.walk(pat):
                for n in names:
                    # <file>.manifest.json: the record of how a generated file was made, not data
                    if n.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES) and not n.endswith(".manifest.json"):
                        files.add(os.path.abspath(os.path.join(root, n)))
            continue
        hits = glob.glob(pat, recursive=True) if any(c in pat for c in "*?[") else [pat]
        hits = [h for h in hits if os.path.isfile(h)]
        if not hits:
            raise FileNotFoundError(f"input {pat!r} matches no file (check the path or quote the glob)")
        files.update(os.path.abspath(h) for h in hits)
    out = sorted(files)
    for f in out:
        kind_of(f)  # fail early on an unknown suffix, before any work starts
    return out


def list_units(files: list[str]) -> list[Unit]:
    """Work units of `files` in a fixed order. A parquet file whose footer is unreadable becomes a
    single unit that reports itself as unreadable when read."""
    units: list[Unit] = []
    for path in files:
        size = os.path.getsize(path)
        if kind_of(path) == "jsonl":
            units.append(Unit(path, "jsonl", 0, -1, size))
            continue
        import pyarrow.parquet as pq

        try:
            md = pq.read_metadata(path)
        except Exception:  # any footer error means "unreadable", reported when read
            units.append(Unit(path, "parquet", 0, -1, size))
            continue
        n = max(md.num_row_groups, 1)
        for i in range(md.num_row_groups):
            units.append(Unit(path, "parquet", i, md.row_group(i).num_rows, size // n))
        if md.num_row_groups == 0:
            units.append(Unit(path, "parquet", 0, 0, 0))
    return units


CHUNK = 1 << 20


class _HashingReader:
    """A binary file whose bytes, as read, also go into a hash: the input's checksum comes from
    the same read as its records."""

    def __init__(self, f, sha) -> None:
        self.f, self.sha = f, sha

    def read(self, n: int = -1) -> bytes:
        block = self.f.read(n)
        self.sha.update(block)
        return block

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _raw_chunks(path: str, sha=None) -> Iterator[bytes]:
    """Decompressed bytes of a JSONL file in chunks. A corrupt or truncated stream raises only
    after every byte before the damage was yielded, so no complete line is lost. With `sha` (a
    hashlib object), every byte of the file goes into it, even past damage."""
    low = path.lower()
    with open(path, "rb") as f:
        raw = f if sha is None else _HashingReader(f, sha)
        try:
            yield from _decompressed(raw, low)
        finally:
            if sha is not None:
                raw.drain()


def _decompressed(raw, low: str) -> Iterator[bytes]:
    if low.endswith(".gz"):
        # zlib rather than gzip.GzipFile: GzipFile raises on truncation before handing out the
        # data it already decompressed.
        d = zlib.decompressobj(wbits=31)
        while block := raw.read(CHUNK):
            while block:
                yield d.decompress(block)
                block = d.unused_data  # concatenated gzip members
                if block:
                    d = zlib.decompressobj(wbits=31)
        if not d.eof:
            raise EOFError("gzip stream ends before its end marker (truncated file)")
    elif low.endswith((".zst", ".zstd")):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        while block := reader.read(CHUNK):
            yield block
    else:
        while block := raw.read(CHUNK):
            yield block


def iter_lines(path: str, sha=None) -> Iterator[tuple[int, bytes]]:
    """(line number, line bytes) of a possibly compressed text file; errors propagate after the
    complete lines read before them. `sha`: see _raw_chunks."""
    lineno = 0
    tail = b""
    for block in _raw_chunks(path, sha):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        for line in lines:
            lineno += 1
            yield lineno, line
    if tail:
        yield lineno + 1, tail


def _read_jsonl(unit: Unit, text_keys: tuple[str, ...], only: set[int] | None, sha) -> Iterator[Record]:
    import orjson

    index = 0
    lineno = 0
    try:
        for lineno, raw in iter_lines(unit.path, sha):
            if not raw or raw.isspace():
                continue  # blank lines are not records (common at the end of files)
            if only is not None and index not in only:
                index += 1  # not wanted: skip the JSON parse (the tokenize pass reads kept lines only)
                continue
            rec = Record(index, f"{unit.path}:{lineno}", lineno, nbytes=len(raw))
            index += 1
            try:
                obj = orjson.loads(raw)  # bytes in: no separate decode; ~3x the stdlib's speed
            except orjson.JSONDecodeError:
                # orjson refuses what the stdlib takes (NaN, lone surrogate escapes, huge ints):
                # the stdlib decides, so that every error keeps its name.
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    rec.error = "bad_utf8"
                    yield rec
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    rec.error = "bad_json"
                    yield rec
                    continue
            if not isinstance(obj, dict):
                rec.error = "bad_json"
                yield rec
                continue
            key = next((k for k in text_keys if obj.get(k) is not None), None)
            rec.key = key
            _fill(rec, _MISSING if key is None else obj[key], {k: obj.get(k) for k in META_COLUMNS if k in obj})
            yield rec
    except Exception as e:  # OSError, EOFError, zlib.error, zstandard.ZstdError: report, never crash
        yield Record(
            index, f"{unit.path}:{lineno + 1}", lineno + 1, error="unreadable_file", meta={"detail": str(e)[:200]}
        )


_MISSING = object()


def _fill(rec: Record, value: Any, meta: dict[str, Any]) -> None:
    rec.meta = meta
    if value is _MISSING or value is None:
        rec.error = "missing_column"
        return
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            rec.error = "bad_utf8"
            return
    if not isinstance(value, str):
        rec.error = "not_text"
        return
    try:
        # JSON may carry lone surrogates ("\ud800") that no tokenizer or file can hold.
        rec.data = value.encode("utf-8")
    except UnicodeEncodeError:
        rec.error = "bad_utf8"
        return
    rec.nbytes = len(rec.data)
    rec.text = value


def _read_parquet(unit: Unit, text_keys: tuple[str, ...], only: set[int] | None, sha) -> Iterator[Record]:
    import pyarrow.parquet as pq

    if sha is not None:
        # pyarrow reads only this row group's pages; the file's checksum needs its own read
        # (sequential, ~1 GB/s, next to the tokenizer's ~15 MB/s).
        with open(unit.path, "rb") as f:
            _HashingReader(f, sha).drain()

    try:
        pf = pq.ParquetFile(unit.path)
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(unit.part))
        names = set(pf.schema_arrow.names)
        keys = [k for k in text_keys if k in names]
        # The tokenize pass (`only` set) needs the text alone; metadata came from the scan.
        cols = [c for c in (*keys, *(META_COLUMNS if only is None else ())) if c in names]
        cols = list(dict.fromkeys(cols))  # a text key may also be a metadata column
        table = pf.read_row_group(unit.part, columns=cols)
    except Exception as e:  # corrupt footer/page: report, never crash
        yield Record(0, f"{unit.path}:rowgroup{unit.part}", error="unreadable_file", meta={"detail": str(e)[:200]})
        return
    rows = range(table.num_rows) if only is None else sorted(only)
    if only is not None:
        table = table.take(list(rows))  # convert only the wanted rows to Python strings
    texts = [table.column(k).to_pylist() for k in keys]
    meta_cols = {c: table.column(c).to_pylist() for c in cols if c in META_COLUMNS}
    for k, i in enumerate(rows):
        rec = Record(i, f"{unit.path}:row{first_row + i}", first_row + i)
        meta = {c: v[k] for c, v in meta_cols.items()}
        # Per row, the first text key with a value (null cells fall through to the next key).
        j = next((j for j, col in enumerate(texts) if col[k] is not None), None)
        rec.key = None if j is None else keys[j]
        _fill(rec, _MISSING if j is None else texts[j][k], meta)
        yield rec


def text_keys_of(text_key: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """"content,text" or ["content", "text"] -> ("content", "text"); ValueError when empty."""
    keys = text_key.split(",") if isinstance(text_key, str) else list(text_key)
    keys = tuple(dict.fromkeys(k.strip() for k in keys if k.strip()))
    if not keys:
        raise ValueError(f"--text-key {text_key!r}: name at least one field, e.g. --text-key content,text")
    return keys


def read_unit(
    unit: Unit, text_key: str | tuple[str, ...], only: set[int] | None = None, sha=None
) -> Iterator[Record]:
    """All records of one unit, bad ones included (with `error` set); with `only`, just the records
    at those indices (the others are skipped without parsing). `text_key` may list several keys
    ("content,text"): each record's text is the first of them it holds (`Record.key` says which).
    With `sha` (a hashlib object) the whole input file's bytes go into it."""
    keys = text_keys_of(text_key)
    if unit.kind == "jsonl":
        yield from _read_jsonl(unit, keys, only, sha)
    else:
        yield from _read_parquet(unit, keys, only, sha)
