"""Logit distillation end to end on CPU: `python -m recipes run gpt_oss_tiny_distill_code` (Megatron-
Bridge's DistillationProvider and ModelOpt's KD loss, unmocked) teaches the tiny student with the larger
tiny teacher (both random weights, imported; the teacher's unembedding scaled up so that its next-token
distribution is far from uniform, hence far from the random student's); the student's KL to the teacher is measured afterwards with transformers' own GptOss
model on the exported checkpoints, so the verdict does not rest on the training code's own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_training import metrics, run_recipe
from tiny_data import write_indexed_dataset

from gptoss.arch import TINY, TINY_TEACHER, arch_from_hf_config

STEPS = 6
# Code the training corpus (tests/tiny_data.py) does not hold.
HELD_OUT = [
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "import os\n\nfor name in sorted(os.listdir('.')):\n    print(name.upper())\n",
]


def _conversion(*argv: str) -> None:
    from conversion.__main__ import main

    assert main(list(argv)) == 0, argv


def _sharpen(hf: Path, factor: float) -> None:
    """Scale the unembedding (lm_head) of an HF checkpoint in place: logits x factor."""
    from safetensors.torch import load_file, save_file

    for f in hf.glob("*.safetensors"):
        tensors = load_file(f)
        if "lm_head.weight" in tensors:
            tensors["lm_head.weight"] = tensors["lm_head.weight"] * factor
            save_file(tensors, f, metadata={"format": "pt"})
            return
    raise AssertionError(f"no lm_head.weight in {hf}")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The code blend (the-stack + replay) and the random tiny student and teacher, imported."""
    ws = tmp_path_factory.mktemp("distill")
    for name in ("the-stack", "replay"):
        write_indexed_dataset(ws / "data" / name / "text_document")
    for arch, seed in ((TINY, "0"), (TINY_TEACHER, "1")):
        hf, meg = ws / "models" / f"gpt-oss-{arch.name}" / "hf", ws / "models" / f"gpt-oss-{arch.name}" / "megatron"
        _conversion("random", "--size", arch.name, "--seed", seed, "--out", str(hf))
        if arch is TINY_TEACHER:
            _sharpen(hf, 3.0)  # KL(teacher || random student) ~1.7 nats instead of ~0.2
        _conversion("import", "--hf", str(hf), "--out", str(meg))
    return ws


def _ckpt(ws: Path, run: str) -> list[str]:
    d = ws / "checkpoints" / run
    return [f"checkpoint.save={d}", f"checkpoint.load={d}"]


@pytest.fixture(scope="module")
def distilled(ws):
    out = run_recipe(ws, "gpt_oss_tiny_distill_code", f"train.train_iters={STEPS}", *_ckpt(ws, "kd"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws / "checkpoints" / "kd"


@pytest.fixture(scope="module")
def lm_only(ws):
    """The same student, data and steps without a teacher: the continued-pretraining recipe."""
    out = run_recipe(ws, "gpt_oss_tiny_cpt_code", f"train.train_iters={STEPS}", *_ckpt(ws, "lm"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws / "checkpoints" / "lm"


@pytest.fixture(scope="module")
def distilled_hf(distilled, tmp_path_factory):
    """The distilled run exported to HF bf16 (shared by the tests below)."""
    out = tmp_path_factory.mktemp("kd-export") / "bf16"
    _conversion("export", "--megatron", str(distilled), "--out", str(out))
    return out


@pytest.mark.training
def test_metrics_log_both_losses_and_the_kd_loss_falls(ws, distilled):
    rows = metrics(ws, "kd")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    kd = [r["logits distillation loss"] for r in rows]
    lm = [r["lm loss"] for r in rows]
    assert all(v > 0 for v in kd) and all(v > 5 for v in lm), (kd, lm)
    assert sum(kd[-2:]) < 0.85 * sum(kd[:2]), kd
    # the default mix, kd_weight 1 and lm_weight 0: total = kd (the LM loss is logged, not trained on)
    assert all(r["total loss"] == pytest.approx(r["logits distillation loss"], rel=1e-6) for r in rows)


def _kl_to_teacher(student_hf: Path, teacher_hf: Path) -> float:
    """Mean over held-out tokens of KL(teacher || student), transformers' GptOss on both, fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from gptoss.tokenizer import encoding

    def load(d: Path):
        return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

    student, teacher = load(student_hf), load(teacher_hf)
    enc, total, n = encoding(), 0.0, 0
    with torch.no_grad():
        for text in HELD_OUT:
            ids = torch.tensor([enc.encode_ordinary(text)])
            p = torch.log_softmax(teacher(ids).logits.float(), -1)
            q = torch.log_softmax(student(ids).logits.float(), -1)
            total += torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum").item()
            n += ids.numel()
    return total / n


@pytest.mark.training
def test_distilled_student_is_closer_to_the_teacher(ws, distilled_hf, lm_only, tmp_path):
    teacher = ws / "models" / "gpt-oss-tiny-teacher" / "hf"
    _conversion("export", "--megatron", str(lm_only), "--out", str(tmp_path / "lm"))
    start = _kl_to_teacher(ws / "models" / "gpt-oss-tiny" / "hf", teacher)
    kd, lm = _kl_to_teacher(distilled_hf, teacher), _kl_to_teacher(tmp_path / "lm", teacher)
    assert kd < 0.9 * start and kd < 0.9 * lm, dict(start=start, distilled=kd, lm_only=lm)


@pytest.mark.training
def test_resume_continues_the_same_kd_curve(ws, distilled):
    """Stop after half the steps (checkpoint, exit 75), rerun: the rest equals the uninterrupted run."""
    split = [f"train.train_iters={STEPS}", f"train.exit_interval={STEPS // 2}", *_ckpt(ws, "kd-split")]
    first = run_recipe(ws, "gpt_oss_tiny_distill_code", *split)
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-2000:]
    second = run_recipe(ws, "gpt_oss_tiny_distill_code", *split[:1], *split[2:])
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    resumed, reference = metrics(ws, "kd-split"), metrics(ws, "kd")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for key in ("lm loss", "logits distillation loss"):
        assert [r[key] for r in resumed] == [r[key] for r in reference], f"{key}: bit-exact in fp32 on CPU"


@pytest.mark.training
def test_export_keeps_the_students_config_and_names(ws, distilled, distilled_hf, tmp_path):
    """bf16 and MXFP4 exports of the distilled run: the student's config (YaRN fields, layer types)
    and tensor names, none of the teacher's; both read back as the checkpoint (validate)."""
    from safetensors import safe_open

    student_hf = ws / "models" / "gpt-oss-tiny" / "hf"
    want = json.loads((distilled / "hf" / "config.json").read_text())  # written from the student's arch
    assert arch_from_hf_config(want) == TINY
    _conversion("export", "--megatron", str(distilled), "--out", str(tmp_path / "mxfp4"), "--dtype", "mxfp4")
    for out in (distilled_hf, tmp_path / "mxfp4"):
        got = json.loads((out / "config.json").read_text())
        for key in ("rope_scaling", "layer_types", "sliding_window", "num_hidden_layers", "hidden_size", "num_local_experts"):
            assert got[key] == want[key], key
        assert got["rope_scaling"]["rope_type"] == "yarn" and got["rope_scaling"]["factor"] == TINY.yarn_factor
        assert arch_from_hf_config(got) == TINY
    names = set()
    for f in distilled_hf.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    release = set()
    for f in student_hf.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            release |= set(st.keys())
    assert names == release, sorted(names ^ release)[:10]
    from conversion import validate

    report = validate.validate(distilled_hf, distilled, logits=True)
    assert report.ok, report.text()


def test_show_names_the_teacher_and_the_loss(capsys):
    import yaml

    from recipes.__main__ import main

    assert main(["show", "gpt_oss_20b_distill_code", "model.kd_config.loss_balancer.lm_weight=0.5",
                 "model.kd_config.logit_kl_temperature=2", "model.teacher.pretrained_checkpoint=/ckpt/t"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["distillation"]
    assert shown == {
        "teacher architecture": "120b",
        "model.teacher.pretrained_checkpoint": "/ckpt/t",
        "model.kd_config.logit_kl_temperature": 2.0,
        "model.kd_config.loss_balancer.kd_weight": 1.0,
        "model.kd_config.loss_balancer.lm_weight": 0.5,
    }


def test_a_missing_teacher_is_refused_before_training(tmp_path, monkeypatch, capsys):
    from recipes.run import run

    monkeypatch.setenv("WORKSPACE", str(tmp_path))
    for name in ("the-stack", "replay"):
        write_indexed_dataset(tmp_path / "data" / name / "text_document")
    (tmp_path / "models" / "gpt-oss-tiny" / "megatron").mkdir(parents=True)
    assert run("gpt_oss_tiny_distill_code", []) == 2
    err = capsys.readouterr().err.strip()
    teacher = tmp_path / "models" / "gpt-oss-tiny-teacher" / "megatron"
    assert err.startswith(f"error: teacher checkpoint {teacher} holds no Megatron checkpoint") and "\n" not in err
    assert "python -m conversion import" in err
    # a checkpoint of another architecture (the student's) where the teacher should be
    _conversion("random", "--size", "tiny", "--out", str(tmp_path / "tiny-hf"))
    _conversion("import", "--hf", str(tmp_path / "tiny-hf"), "--out", str(teacher))
    assert run("gpt_oss_tiny_distill_code", []) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: teacher checkpoint {teacher} is not the recipe's teacher: num_layers 2 (recipe: 4)"), err
