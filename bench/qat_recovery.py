"""How much of what MXFP4 PTQ loses does the tiny QAD recipe recover, and on which text (issue 23).

One run: the tiny bf16 model of tests/test_qat.py (random weights, lm_head x3, experts x4), its PTQ
export, then `gpt_oss_tiny_qad_mxfp4` for STEPS steps on CORPUS and its MXFP4 export; prints the KL
to the bf16 model (transformers' GptOss, fp32, nats/token) of PTQ and QAD on three sets of text:
the test's two held-out snippets, 40 standard-library modules never trained on, and the training
snippets themselves. Appends one JSON line to OUT/results.jsonl. ~4-5 min on 2 cores.

    .venv/bin/python bench/qat_recovery.py OUT --corpus repetitive|stdlib --lr 4e-4 --steps 12 --batch 8
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_qat  # noqa: E402  (tests/: the fixture's model recipe, one place)
import tiny_data  # noqa: E402
from test_training import metrics, run_recipe  # noqa: E402

STDLIB = sorted(glob.glob(str(Path(sysconfig.get_path("stdlib")) / "*.py")))
TRAIN_MODULES, HELD_MODULES = STDLIB[::2], STDLIB[1::2][:40]


def write_texts(prefix: Path, texts: list[str]) -> None:
    from megatron_cpu.compat import import_bridge

    import_bridge()
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from gptoss.tokenizer import EOD_ID, encoding, fingerprint

    prefix.parent.mkdir(parents=True, exist_ok=True)
    enc, builder = encoding(), IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    for text in texts:
        builder.add_document(np.array(enc.encode_ordinary(text) + [EOD_ID], dtype=np.int32), [1])
    builder.finalize(str(prefix) + ".idx")
    (prefix.parent / "manifest.json").write_text(json.dumps({"tokenizer": fingerprint()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--corpus", choices=("repetitive", "stdlib"), default="repetitive")
    ap.add_argument("--lr", default="4e-4")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    base, tag = a.out / "base", f"{a.corpus}-lr{a.lr}-{a.steps}x{a.batch}"
    ws = a.out / tag
    if not (base / "start-mxfp4").exists():
        hf, meg = base / "models/gpt-oss-tiny/hf", base / "models/gpt-oss-tiny/megatron"
        test_qat._conversion("random", "--size", "tiny", "--seed", "0", "--out", str(hf))
        test_qat._make_rounding_matter(hf)
        test_qat._conversion("import", "--hf", str(hf), "--out", str(meg))
        for dtype in ("bf16", "mxfp4"):
            test_qat._conversion("export", "--megatron", str(meg), "--out", str(base / f"start-{dtype}"), "--dtype", dtype)
    for name in ("the-stack", "replay"):
        prefix = ws / "data" / name / "text_document"
        if a.corpus == "repetitive":
            tiny_data.write_indexed_dataset(prefix)
        else:
            write_texts(prefix, [Path(f).read_text() for f in TRAIN_MODULES])
    start, run, t0 = base / "models/gpt-oss-tiny/megatron", ws / "checkpoints/qad", time.monotonic()
    out = run_recipe(
        ws, "gpt_oss_tiny_qad_mxfp4", f"train.train_iters={a.steps}", f"checkpoint.save={run}", f"checkpoint.load={run}",
        f"checkpoint.pretrained_checkpoint={start}", f"model.teacher.pretrained_checkpoint={start}",
        f"optimizer.lr={a.lr}", f"optimizer.min_lr={a.lr}", f"train.global_batch_size={a.batch}",
        f"train.micro_batch_size={a.batch}", timeout=3600,
    )  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"the QAD run failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    test_qat._conversion("export", "--megatron", str(run), "--out", str(ws / "qad-mxfp4"), "--dtype", "mxfp4")
    result = {"run": tag, "train_s": round(time.monotonic() - t0),
              "kd": [round(r["logits distillation loss"], 4) for r in metrics(ws, "qad")]}  # fmt: skip
    sets = {
        "held-out snippets (the test's)": test_qat.HELD_OUT,
        "stdlib modules never trained on": [Path(f).read_text() for f in HELD_MODULES],
        "the repetitive training snippets": [doc * 4 for doc in tiny_data.CORPUS],
    }
    for name, texts in sets.items():
        ptq, qad = test_qat._kl(base / "start-bf16", base / "start-mxfp4", texts), test_qat._kl(base / "start-bf16", ws / "qad-mxfp4", texts)
        result[name] = {"ptq": round(ptq, 4), "qad": round(qad, 4), "recovered": round((ptq - qad) / ptq, 3)}
    print(json.dumps(result))
    with open(a.out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
