"""Writing outputs so that nothing half-written is ever left under a final name, and nothing the
kit did not write is ever replaced.

- `atomic_file(path)`, `write_text_atomic`, `write_bytes_atomic`: a temporary file beside `path`, then a rename.
- `staged_dir(out, force=...)`: a temporary directory beside `out`, renamed to `out` when the block
  succeeds (removed when it fails); rank-aware, so a torchrun job stages once, on rank 0.
- `KIT_OUTPUT_MARK`: every directory `staged_dir` puts in place carries this file, and `force`
  replaces only such a directory (or an empty one), never one of the user's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kit import dist

KIT_OUTPUT_MARK = ".gptoss-kit-output"


class OutputError(ValueError):
    """An output path the kit refuses to write or replace; the message names it and the fix."""


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, for writers that go by it, such as
    matplotlib), renamed to `path` when the block succeeds, removed when it fails. The file gets the
    umask's permissions, like any file (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Readers of `path` see all of `data` or nothing (atomic_file)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode())


def check_replaceable(out: Path, force: bool, error: type[Exception] = OutputError) -> None:
    """Refuse an existing `out`, unless `force` and it is empty or the kit's own output."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise error(f"{out}: already exists (use --force to overwrite)")
    if not out.is_dir() or out.is_symlink():
        raise error(f"{out}: exists and is not a directory the kit wrote; choose another output")
    if (out / KIT_OUTPUT_MARK).is_file() or not any(out.iterdir()):
        return
    raise error(
        f"{out}: --force replaces only a directory the kit wrote (it has no {KIT_OUTPUT_MARK}); "
        "choose another output, or move this one away yourself"
    )


def replace_dir(tmp: Path, out: Path, error: type[Exception] = OutputError) -> None:
    """Put the complete directory `tmp` at `out`, marked as the kit's; an existing `out` (checked by
    `check_replaceable`) is removed only afterwards."""
    (tmp / KIT_OUTPUT_MARK).write_text("written by the gpt-oss kit; `--force` may replace this directory\n")
    if out.exists():
        check_replaceable(out, True, error)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, force: bool = False, error: type[Exception] = OutputError) -> Iterator[Path]:
    """Yield a temporary directory beside `out` (hidden, `.<name>.tmp-*`), renamed to `out` only when
    the block succeeds on every rank; removed when it fails. An existing `out` is refused unless
    `force` and `check_replaceable` allows it. Under torch.distributed, rank 0 makes, renames and
    removes it and every rank learns its name (so every rank must enter the block)."""
    out = Path(out).absolute()
    # Without a process group there is no one to share the work with: this process stages alone
    # (whatever RANK says), rather than wait on a broadcast that never comes.
    leader = dist.is_rank0() or not dist.initialized()
    made: str | Exception | None = None
    if leader:
        try:
            check_replaceable(out, force, error)
            out.parent.mkdir(parents=True, exist_ok=True)
            made = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-")
        except Exception as e:  # noqa: BLE001 - every rank must learn of it, then raise it
            made = e
    made = dist.broadcast_from_rank0(made)
    if isinstance(made, Exception):
        raise made
    tmp = Path(made)
    try:
        yield tmp
        dist.barrier()
    except BaseException:
        if leader:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if leader:
        replace_dir(tmp, out, error)
    dist.barrier()
