"""Samples per second of MultiPL-E scoring, per language: the kit's sandbox (inference.multiple:
namespaces, its own root, limits, the end-of-tests mark) against the same programs run with plain
`subprocess` and no sandbox, in the same run, with the same worker count.

    sandbox  codeeval.score on N correct samples of the language's kit problem (tests/test_multiple.py)
    plain    the same program text, build and run commands, environment, time limits and verdict
             (exit statuses and the end-of-tests mark), in a fresh temporary directory per sample

Each language's two sides are interleaved over `--repeats` rounds and each side's best round is
kept. Reports samples/s of each and the overhead (sandbox wall / plain wall). Languages whose
toolchain is missing are listed as skipped.

    python bench/eval_languages.py [--samples 12] [--workers 2] [--repeats 2] [--out bench/eval_languages.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def plain_one(problem, completion: str) -> bool:
    """One sample without the sandbox: what multiple.score_one runs, as plain subprocesses."""
    from inference import multiple

    lang = multiple.language(problem.language)
    nonce = f"kit-end-of-tests-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="kit-plain-") as work:
        (Path(work) / lang.file).write_text(multiple.program(problem, completion))
        # the sandboxed program's own environment (inference/_sandbox_boot.py), not the caller's
        # (whose PATH may put pyenv's or rustup's shims first)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               **{k: v.format(work=work) for k, v in lang.env}}  # fmt: skip
        for cmd in lang.build:
            if subprocess.run(cmd, cwd=work, env=env, capture_output=True, timeout=lang.build_timeout_s).returncode:
                return False
        run_env = {**env, "KIT_END_OF_TESTS": nonce} if lang.nonce_in_env else env
        r = subprocess.run(lang.run, cwd=work, env=run_env, input=(nonce + "\n").encode(), capture_output=True,
                           timeout=lang.run_timeout_s)  # fmt: skip
        return r.returncode == 0 and nonce in [line.strip() for line in r.stdout.decode().splitlines()[-20:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=12, help="samples per language and side")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--languages", help="comma-separated codes (default: every one in tests/test_multiple.py)")
    ap.add_argument("--out", default=str(ROOT / "bench/eval_languages.md"))
    args = ap.parse_args()

    from test_multiple import CASES, problem

    from inference import codeeval, multiple

    load0 = os.getloadavg()
    rows, skipped = [], []
    for code in args.languages.split(",") if args.languages else sorted(CASES):
        lang = multiple.language(code)
        why = multiple.missing_toolchain(lang)
        if why:
            skipped.append(why)
            continue
        prob = problem(code)
        comps = [CASES[code][2]["correct"]] * args.samples
        best = {"sandbox": float("inf"), "plain": float("inf")}
        for _ in range(args.repeats):
            t0 = time.monotonic()
            r = codeeval.score([prob], [comps], ks=(1,), workers=args.workers)
            best["sandbox"] = min(best["sandbox"], time.monotonic() - t0)
            assert r.problems[0].c == args.samples, (code, r.problems[0].errors[:1])
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.workers) as pool:
                ok = list(pool.map(plain_one, [prob] * len(comps), comps))
            best["plain"] = min(best["plain"], time.monotonic() - t0)
            assert all(ok), code
        rows.append((lang.name, args.samples / best["sandbox"], args.samples / best["plain"],
                     best["sandbox"] / best["plain"]))  # fmt: skip
        print(f"{lang.name}: sandbox {rows[-1][1]:.2f}/s, plain {rows[-1][2]:.2f}/s, x{rows[-1][3]:.2f}", flush=True)
    load1 = os.getloadavg()
    lines = [
        "# MultiPL-E scoring: samples/s per language, sandbox against plain subprocess",
        "",
        f"`python bench/eval_languages.py --samples {args.samples} --workers {args.workers} --repeats {args.repeats}`"
        f" on {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d %H:%M')}; load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after; nothing else ran beside it.",
        "",
        "Each sample is a correct completion of the language's kit problem (tests/test_multiple.py), built and "
        "run as MultiPL-E's evaluator does; best of the rounds for each side.",
        "",
        "| language | sandbox samples/s | plain samples/s | overhead (sandbox wall / plain wall) |",
        "|---|---|---|---|",
        *(f"| {name} | {s:.2f} | {p:.2f} | {x:.2f}x |" for name, s, p, x in rows),
        "",
    ]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped), ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
