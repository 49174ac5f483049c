"""Conversion of a full-size gpt-oss-20b-shaped checkpoint on this host: wall time, peak RSS and
bytes/s of `python -m conversion import` and `export --dtype mxfp4`, against plain file-copy
throughput of the same bytes measured in the same run.

    python bench/conversion_20b.py --work /tmp/bench-20b [--size 20b] [--validate] [--resume]

The source is random weights in the official MXFP4 layout (`conversion random --size 20b --mxfp4`,
written tensor by tensor). Each step runs as its own process; its peak RSS is the kernel's
ru_maxrss for that process. Disk: source 13 GB + Megatron checkpoint 42 GB (bf16) + export 13 GB;
the source is deleted after the copy and import steps to fit 61 GB. Writes bench/conversion_<size>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str], log: Path) -> dict:
    """Wall seconds and peak RSS (bytes) of one process; raises on a non-zero exit."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"wall_s": wall, "peak_rss": usage.ru_maxrss * 1024}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def copy_dir(src: Path, dst: Path) -> dict:
    """The reference: plain file copy of the same bytes (read + write, same disk, same process kind)."""
    t0 = time.perf_counter()
    dst.mkdir()
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dst / f.name)
    os.sync()
    return {"wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (on the disk to measure)")
    ap.add_argument("--size", default="20b")
    ap.add_argument("--validate", action="store_true", help="also validate the export against the checkpoint")
    ap.add_argument("--resume", action="store_true", help="keep the steps already measured in --work")
    args = ap.parse_args()
    work = args.work.absolute()
    record = work / "steps.json"  # measurements so far: a resumed run keeps them and skips those steps
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "conversion"]
    hf, meg, out = work / "hf", work / "megatron", work / "hf-export-mxfp4"
    done = json.loads(record.read_text()) if record.exists() else {}
    rows = []

    def step(name: str, cmd: list[str], read: int, written_dir: Path | None) -> None:
        if name in done:
            rows.append(done[name])
            print(f"== {name}: measured before, kept", flush=True)
            return
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        m = run_measured(cmd, work / f"{name}.log")
        written = dir_bytes(written_dir) if written_dir else 0
        rows.append({"step": name, **m, "read": read, "written": written})
        done[name] = rows[-1]
        record.write_text(json.dumps(done, indent=1))
        print(
            f"   {m['wall_s']:.0f} s, peak RSS {m['peak_rss'] / 2**30:.2f} GiB, wrote {written / 2**30:.1f} GiB",
            flush=True,
        )

    step("random", [*py, "random", "--size", args.size, "--mxfp4", "--out", str(hf)], 0, hf)
    if "copy" not in done:
        print("== file copy of the source (reference)", flush=True)
        done["copy"] = {"bytes": dir_bytes(hf), **copy_dir(hf, work / "copy")}
        shutil.rmtree(work / "copy")
        record.write_text(json.dumps(done, indent=1))
    copy = done["copy"]
    src_bytes = copy["bytes"]
    copy_bps = src_bytes / copy["wall_s"]
    print(f"   copy: {copy['wall_s']:.0f} s, {copy_bps / 2**20:.0f} MiB/s", flush=True)
    step("import", [*py, "import", "--hf", str(hf), "--out", str(meg)], src_bytes, meg)
    shutil.rmtree(hf, ignore_errors=True)  # room for the export
    meg_bytes = dir_bytes(meg)
    step("export-mxfp4", [*py, "export", "--megatron", str(meg), "--out", str(out), "--dtype", "mxfp4"], meg_bytes, out)
    if args.validate:
        step("validate", [*py, "validate", "--hf", str(out), "--megatron", str(meg), "--no-logits"], meg_bytes, None)

    from gptoss.arch import get_arch

    arch = get_arch(args.size)
    bf16_model = arch.total_params() * 2
    lines = [
        f"# Conversion of a gpt-oss-{args.size}-shaped checkpoint (random weights, official MXFP4 layout)",
        "",
        f"Command: `python bench/conversion_20b.py --work {work} --size {args.size}{' --validate' if args.validate else ''}`",
        f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"{platform.platform()}, no GPU. Date: {time.strftime('%Y-%m-%d')}.",
        f"Model: {arch.total_params() / 1e9:.2f}B parameters = {bf16_model / 2**30:.1f} GiB in bf16; "
        f"source {src_bytes / 2**30:.1f} GiB (experts MXFP4).",
        "",
        f"Reference, measured in the same run: plain file copy of the source, {copy_bps / 2**20:.0f} MiB/s "
        f"({copy['wall_s']:.0f} s for {src_bytes / 2**30:.1f} GiB, same disk).",
        "",
        "| step | wall | peak RSS | peak RSS / bf16 model | read | written | read MiB/s | vs file copy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bps = r["read"] / r["wall_s"] if r["read"] else 0
        lines.append(
            f"| {r['step']} | {r['wall_s']:.0f} s | {r['peak_rss'] / 2**30:.2f} GiB | {r['peak_rss'] / bf16_model:.1%} | "
            f"{r['read'] / 2**30:.1f} GiB | {r['written'] / 2**30:.1f} GiB | "
            + (f"{bps / 2**20:.0f} | {bps / copy_bps:.2f}x |" if bps else "- | - |")
        )
    result = ROOT / "bench" / f"conversion_{args.size}.md"
    result.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {result}")


if __name__ == "__main__":
    main()
