"""data_prep pretrain as an array of tasks (one node is task 0 of 1): the shares, exact dedup
across tasks, the last step's checks and the array variables of SLURM. The same on the local
SLURM cluster with sbatch --array: tests/test_slurm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_data import write_code_corpus

from data_prep import pretrain
from data_prep.__main__ import _array_task
from data_prep.filters import FilterConfig
from gptoss.tokenizer import EOD_ID, encoding


def read_all(out: Path) -> list[list[int]]:
    """Every document of the dataset in `out`, its shards in the manifest's order (read by megatron-core)."""
    from megatron_cpu.compat import import_bridge

    import_bridge()
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    m = json.loads((out / "manifest.json").read_text())
    docs = []
    for p in m["prefixes"]:
        ds = IndexedDataset(str(out / p))  # kept open while its memory map is read
        docs += [ds[i].tolist() for i in range(len(ds))]
    return docs


def _cfg(inputs, out, **kw) -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig(inputs=inputs, output=out, filters=FilterConfig(licenses=[]), progress=False, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_code_corpus(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def one_node(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "code"
    return out, pretrain.run(_cfg(corpus, out), log=lambda s: None)


def test_an_array_writes_the_one_node_dataset(corpus, one_node, tmp_path):
    ref_out, ref = one_node
    out = tmp_path / "code"
    assert pretrain.run(_cfg(corpus, out, task=0, tasks=3), log=lambda s: None) is None
    assert pretrain.run(_cfg(corpus, out, task=2, tasks=3), log=lambda s: None) is None
    assert not (out / "manifest.json").exists()
    m = pretrain.run(_cfg(corpus, out, task=1, tasks=3, workers=2), log=lambda s: None)  # the last one writes it
    # the same documents in the same order: the tokens the tokenizer gives the kept texts
    docs = read_all(out)
    assert docs == read_all(ref_out) and len(docs) == ref["kept"]["docs"] == 6 * 30
    enc = encoding()
    assert docs[0] == enc.encode_ordinary("def f_0_0(x):\n    return x * 0 + 0  # \n") + [EOD_ID]
    # the copies across tasks (the last file repeats the first) are dropped as one node drops them
    assert m["dropped"] == ref["dropped"] and m["dropped"]["duplicate"]["docs"] == 6 + 5 + 1
    assert m["kept"] == ref["kept"] and m["languages"] == ref["languages"]
    assert len(m["prefixes"]) > 3 and m["plan"]["tasks"] == 3
    assert m["unreferenced_tokens"] > 0  # copies found across slots stay in their .bin, unindexed
    assert not (out / ".work").exists()
    # a finished task resubmitted, or the whole array again: nothing is redone
    assert pretrain.run(_cfg(corpus, out, task=0, tasks=3), log=lambda s: None) == m


def test_the_last_step_refuses_a_task_with_other_settings(corpus, tmp_path):
    out = tmp_path / "code"
    pretrain.run(_cfg(corpus, out, task=0, tasks=3), log=lambda s: None)
    with pytest.raises(RuntimeError, match=r"task\(s\) 1-2 of 3 have not finished.*--array=1-2"):
        pretrain.run(_cfg(corpus, out, task=0, tasks=3, finalize=True), log=lambda s: None)
    pretrain.run(_cfg(corpus, out, task=1, tasks=3), log=lambda s: None)
    odd = _cfg(corpus, out, task=2, tasks=3)
    odd.filters.max_bytes = 10_000
    with pytest.raises(
        pretrain.PlanMismatchError, match=r"task 2 of 3 ran with other inputs or settings than the others \(filters\)"
    ):
        pretrain.run(odd, log=lambda s: None)
    assert not (out / "manifest.json").exists()
    # the fix it names: resubmit that task with the others' arguments and --overwrite
    m = pretrain.run(_cfg(corpus, out, task=2, tasks=3, overwrite=True), log=lambda s: None)
    assert m["kept"]["docs"] == 6 * 30


def test_a_killed_slot_resumes_after_its_last_intact_unit(corpus, one_node, tmp_path, monkeypatch):
    """A kill after one unit (the abort hook, as in a real kill the .bin.part is left behind);
    then the part file is damaged past that unit: the rerun keeps the intact unit, redoes the rest."""
    ref_out, _ = one_node
    out = tmp_path / "code"
    monkeypatch.setenv(pretrain.ABORT_ENV, "process:2")
    with pytest.raises(pretrain.SimulatedKill):
        pretrain.run(_cfg(corpus, out), log=lambda s: None)
    monkeypatch.delenv(pretrain.ABORT_ENV)
    (part,) = (out / ".work" / "slots").glob("*.bin.part")
    infos = [json.loads(p.read_text()) for p in sorted((out / ".work" / "units").glob("u*.json"))]
    assert len(infos) == 2
    with open(part, "r+b") as f:  # the second unit's bytes damaged, as by a crash of the node
        f.seek(infos[1]["bin"][0] + 8)
        f.write(b"\xff\xff\xff\xff")
    logs: list[str] = []
    pretrain.run(_cfg(corpus, out, keep_work=True), log=logs.append)
    assert read_all(out) == read_all(ref_out)
    assert any("resuming" in s for s in logs)
    # the first unit was kept (same mark), the second redone (a new mark, same content)
    again = [json.loads(p.read_text()) for p in sorted((out / ".work" / "units").glob("u*.json"))]
    assert again[0] == infos[0] and again[1]["bin"] == infos[1]["bin"]


def test_the_array_task_comes_from_slurm(monkeypatch):
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(k, raising=False)
    assert _array_task(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    for k, v in {"MIN": "0", "MAX": "2", "COUNT": "3"}.items():
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{k}", v)
    assert _array_task(None, None) == (1, 3)
    # a resubmitted subset (sbatch --array=1): SLURM's count is 1, so --tasks must say the size
    for k, v in {"MIN": "1", "MAX": "1", "COUNT": "1"}.items():
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{k}", v)
    with pytest.raises(ValueError, match="pass --tasks N"):
        _array_task(None, None)
    assert _array_task(None, 3) == (1, 3)
    with pytest.raises(ValueError, match="must be in 0..2"):
        _array_task(4, 3)


def test_a_default_prefix_reads_every_shard(corpus, tmp_path):
    """Recipes default to data/<name>/text_document; a dataset written at -j 2 has shards
    text_document_00000, ...: the blend entry becomes one per shard, its weight split by tokens."""
    from kit.workspace import expand_sharded

    out = tmp_path / "code"
    m = pretrain.run(_cfg(corpus, out, workers=2), log=lambda s: None)
    assert len(m["prefixes"]) == 6  # one per input file here (8 slots asked, 6 units)
    entries = expand_sharded(str(out / "text_document"), 0.8)
    assert [p for p, _ in entries] == [str(out / p) for p in m["prefixes"]]
    tokens = [s["tokens"] for s in m["shards"]]
    assert [w for _, w in entries] == [pytest.approx(0.8 * t / sum(tokens)) for t in tokens]
    assert expand_sharded(str(out / "other"), 0.5) == [(str(out / "other"), 0.5)]  # not this dataset's name


def test_prep_imports_neither_torch_nor_megatron(corpus, tmp_path):
    """A worker starts in about a second: the command that writes a dataset (and so every forked
    worker) never imports torch or megatron-core (each cost ~8 s per worker before)."""
    import subprocess
    import sys

    code = (
        "import sys; from data_prep.__main__ import main; "
        f"rc = main(['pretrain', {Path(corpus[0]).parent.as_posix()!r}, '-o', {str(tmp_path / 'o')!r}, '-j', '2', "
        "'--licenses', 'any', '--no-progress']); "
        "print(rc, sorted(m for m in ('torch', 'megatron', 'megatron.core') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.split("\n")[-2] == "0 []", r.stdout + r.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["kept"]["docs"] == 6 * 30
