"""python -m conversion {import,export,validate,roundtrip,random} — HF <-> Megatron for gpt-oss.

Runs as one process on CPU, or under torchrun (world size = TP x PP x EP) on GPUs / SLURM.
Exit status: 0 ok, 1 validation failed, 2 bad input (the message names the file and tensor).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from conversion.hf_io import ConversionError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m conversion", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="cmd", required=True)

    def layout(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--tp", type=int, default=1, help="tensor parallel size (checked; the checkpoint fits any)")
        sp.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
        sp.add_argument("--ep", type=int, default=1, help="expert parallel size")
        sp.add_argument(
            "--engine",
            choices=("stream", "bridge"),
            default="stream",
            help="stream: tensor by tensor in one process, one layer in memory (default); "
            "bridge: build the model with AutoBridge in the --tp/--pp/--ep layout, under torchrun",
        )

    imp = sub.add_parser("import", help="HF checkpoint (bf16 or MXFP4) -> Megatron torch_dist")
    imp.add_argument("--hf", required=True)
    imp.add_argument("--out", required=True)
    imp.add_argument("--force", action="store_true", help="replace an existing --out")
    layout(imp)

    exp = sub.add_parser(
        "export",
        help="Megatron checkpoint -> HF safetensors (a LoRA run: merged weights, plus adapter/ in PEFT format)",
    )
    exp.add_argument("--megatron", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument("--dtype", choices=("bf16", "mxfp4"), default="bf16")
    exp.add_argument("--force", action="store_true")
    layout(exp)

    val = sub.add_parser("validate", help="weights and logits of HF vs Megatron")
    val.add_argument("--hf", required=True)
    val.add_argument("--megatron", required=True)
    val.add_argument("--no-logits", action="store_true", help="weights only (e.g. 20b/120b on a small host)")

    rt = sub.add_parser("roundtrip", help="import, export, validate in one job")
    rt.add_argument("--hf", required=True)
    rt.add_argument("--work", help="where to keep the Megatron and exported checkpoints (default: a temp dir)")
    rt.add_argument("--dtype", choices=("bf16", "mxfp4"), default="bf16", help="export dtype")
    rt.add_argument("--no-logits", action="store_true")
    layout(rt)

    rnd = sub.add_parser("random", help="a random-weight HF checkpoint of the real architecture (demo, tests)")
    rnd.add_argument(
        "--size", default="tiny", help="tiny | 20b | 120b (written tensor by tensor: 20b is 13 GB in MXFP4)"
    )
    rnd.add_argument("--mxfp4", action="store_true", help="experts in MXFP4 like the official release")
    rnd.add_argument("--out", required=True)
    rnd.add_argument("--seed", type=int, default=0)
    rnd.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from megatron_cpu.training import eager_without_gpu

    eager_without_gpu()  # before Megatron imports: its torch.compile'd fusions target CUDA
    from conversion import megatron_io, validate

    try:
        if args.cmd == "random":
            from conversion.random_init import make_random_hf, make_random_hf_streamed
            from gptoss.arch import get_arch
            from kit.fs import staged_dir

            try:
                arch = get_arch(args.size)
            except ValueError as err:
                raise ConversionError(str(err)) from None
            with staged_dir(args.out, force=args.force, error=ConversionError) as tmp:
                if args.size == "tiny" and not args.mxfp4:  # through transformers' own model class and save
                    make_random_hf(tmp, arch, args.seed)
                else:
                    make_random_hf_streamed(tmp, arch, args.seed, mxfp4_experts=args.mxfp4)
            print(f"random gpt-oss-{args.size} (seed {args.seed}) -> {args.out}")
            return 0
        layout = {k: getattr(args, k) for k in ("tp", "pp", "ep", "engine") if hasattr(args, k)}
        if args.cmd == "import":
            out = megatron_io.import_hf(args.hf, args.out, force=args.force, **layout)
            print(f"imported {args.hf} -> {out}")
            return 0
        if args.cmd == "export":
            out = megatron_io.export_hf(args.megatron, args.out, dtype=args.dtype, force=args.force, **layout)
            print(f"exported {args.megatron} -> {out} ({args.dtype})")
            from conversion import mxfp4

            if mxfp4.is_qat_run(args.megatron):  # a run of recipes/qat.py
                print(
                    "QAT run: the MXFP4 experts are the weights it trained with, unchanged (validate checks it)"
                    if args.dtype == "mxfp4"
                    else "note: a QAT run in bf16 holds its unquantized experts; --dtype mxfp4 writes what it trained with"
                )
            return 0
        if args.cmd == "validate":
            report = validate.validate(args.hf, args.megatron, logits=not args.no_logits)
            print(report.text())
            return 0 if report.ok else 1
        if args.cmd == "roundtrip":
            work = Path(args.work or tempfile.mkdtemp(prefix="gptoss-roundtrip-"))
            meg, hf_out = work / "megatron", work / "hf-export"
            megatron_io.import_hf(args.hf, meg, force=True, **layout)
            megatron_io.export_hf(meg, hf_out, dtype=args.dtype, force=True, **layout)
            report = validate.validate(args.hf, meg, logits=not args.no_logits)
            print(report.text())
            # the export must also read back as the source (bitwise, or dequantized for MXFP4)
            again = validate.validate_hf_pair(args.hf, hf_out)
            print(again.text())
            return 0 if report.ok and again.ok else 1
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - one line for the user; --debug shows where
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (a bug or an input the kit does not check yet; "
              "rerun with `python -m conversion --debug ...` for the traceback)", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
