"""`make demo` leaves the user's workspace alone: it writes only into $WORKSPACE/demo, marked as its
own, replaces only that on a rerun, and refuses (deleting nothing) a demo directory holding anything
it did not make. The demo runs for real, through `make`, stopped after its first stage with
DEMO_UNTIL (CI runs the whole demo)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def demo(workspace: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORKSPACE": str(workspace), "DEMO_UNTIL": "random-checkpoint"}
    return subprocess.run(["make", "-s", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def user_files(ws: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(ws.rglob("*")) if p.is_file() and "demo" not in p.relative_to(ws).parts}


@pytest.mark.slow  # ~32 s on 2 cores: the demo script end to end, twice
def test_a_users_workspace_survives_two_demo_runs(tmp_path):
    ws = tmp_path / "workspace"
    for rel, data in [
        ("models/gpt-oss-20b/hf/config.json", b'{"model_type": "gpt_oss"}'),
        ("data/the-stack/text_document.bin", b"\x00" * 64),
        ("checkpoints/gpt-oss-20b-cpt-code/latest_checkpointed_iteration.txt", b"1000\n"),
    ]:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data)
    before = user_files(ws)
    for attempt in (1, 2):
        out = demo(ws)
        assert out.returncode == 0, f"run {attempt}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        assert "stopped after stage random-checkpoint" in out.stdout
        assert user_files(ws) == before, f"run {attempt} changed the user's files"
        assert (ws / "demo" / ".made-by-kit-demo").is_file()
        assert (ws / "demo" / "models" / "gpt-oss-tiny" / "hf" / "config.json").is_file()


def test_a_demo_directory_with_foreign_files_is_refused(tmp_path):
    ws = tmp_path / "workspace"
    theirs = ws / "demo" / "notes.txt"  # no mark: not the demo's
    theirs.parent.mkdir(parents=True)
    theirs.write_text("mine")
    out = demo(ws)
    assert out.returncode != 0 and f"{ws / 'demo'} holds files the demo did not make" in out.stderr
    assert theirs.read_text() == "mine" and sorted(p.name for p in (ws / "demo").iterdir()) == ["notes.txt"]
    # marked as the demo's, but with an entry the demo never makes: refused too
    (ws / "demo" / ".made-by-kit-demo").write_text("")
    out = demo(ws)
    assert out.returncode != 0 and f"{ws / 'demo' / 'notes.txt'} was not made by the demo" in out.stderr
    assert theirs.read_text() == "mine"
