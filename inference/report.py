"""Side-by-side report of evaluated checkpoints: Markdown plus a PNG chart.

Inputs are the JSON files `python -m inference eval code|loss` write (each records the checkpoint,
its label and the exact command line). Output, under $WORKSPACE/results/<name>/:
    report.md    pass@k per checkpoint, validation loss / perplexity per dataset, per-problem
                 results (c/n per checkpoint), and every command that produced the numbers
    report.png   pass@k and validation loss as grouped bars
Both are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path


def load_results(paths: list[str | os.PathLike]) -> list[dict]:
    """Result dicts from files, or from the eval_*.json files in directories; ValueError if none."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("eval_*.json"))
            if not found:
                raise ValueError(f"{p}: no eval_*.json inside (write them with `python -m inference eval ...`)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{p}: no such result file or directory")
    out = []
    for f in files:
        try:
            r = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not a JSON result ({e})") from None
        if r.get("kind") not in ("code", "loss"):
            raise ValueError(f"{f}: not a result of `python -m inference eval` (no kind code/loss)")
        r["_file"] = str(f)
        out.append(r)
    return out


def _labels(results: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in results:
        if r["label"] not in seen:
            seen.append(r["label"])
    return seen


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _by_kind(results: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({label: code result}, {label: {dataset: loss result}}): loss runs of one label are merged."""
    code = {r["label"]: r for r in results if r["kind"] == "code"}
    loss: dict[str, dict] = {}
    for r in results:
        if r["kind"] == "loss":
            loss.setdefault(r["label"], {}).update(r["datasets"])
    return code, loss


def markdown(results: list[dict], title: str, command: str, chart: str | None) -> str:
    labels = _labels(results)
    code, loss = _by_kind(results)
    lines = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `{command}`.", ""]
    if chart:
        lines += [f"![pass@k and validation loss]({chart})", ""]
    if code:
        ks = sorted({k for r in code.values() for k in r["pass_at_k"]}, key=int)
        lines += [
            "## pass@k",
            "",
            "| checkpoint | problems | samples/problem | " + " | ".join(f"pass@{k}" for k in ks) + " |",
        ]
        lines.append("|---" * (3 + len(ks)) + "|")
        for label in labels:
            if label in code:
                r = code[label]
                cells = [f"{r['pass_at_k'][k]:.4f}" if k in r["pass_at_k"] else "-" for k in ks]
                n = r["problems"][0]["n"] if r["problems"] else 0
                lines.append(f"| {label} | {len(r['problems'])} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    if loss:
        sets = sorted({d for v in loss.values() for d in v})
        lines += [
            "## Validation loss (perplexity)",
            "",
            "| checkpoint | " + " | ".join(sets) + " |",
            "|---" * (1 + len(sets)) + "|",
        ]
        for label in labels:
            if label in loss:
                cells = [
                    f"{loss[label][d]['loss']:.4f} ({loss[label][d]['perplexity']:.2f})" if d in loss[label] else "-"
                    for d in sets
                ]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "Tokens evaluated per dataset: " + ", ".join(
            f"{d} {next(v[d]['tokens'] for v in loss.values() if d in v):,}" for d in sets), ""]  # fmt: skip
    if code:
        tasks: list[str] = []
        for r in code.values():
            tasks += [p["task_id"] for p in r["problems"] if p["task_id"] not in tasks]
        cols = [lb for lb in labels if lb in code]
        lines += [
            "## Per-problem results (correct samples / samples)",
            "",
            "| task | " + " | ".join(cols) + " |",
            "|---" * (1 + len(cols)) + "|",
        ]
        by = {lb: {p["task_id"]: p for p in code[lb]["problems"]} for lb in cols}
        for t in tasks:
            cells = [f"{by[lb][t]['c']}/{by[lb][t]['n']}" if t in by[lb] else "-" for lb in cols]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Commands", "", "Each number above was produced by:", "", "```bash"]
    lines += [r["command"] for r in results]
    lines += [command, "```", ""]
    lines += ["Result files: " + ", ".join(f"`{r['_file']}`" for r in results), ""]
    return "\n".join(lines)


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _labels(results)
    code, loss = _by_kind(results)
    panels = [p for p in ("code", "loss") if (code if p == "code" else loss)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    width = 0.8 / max(1, len(labels))
    for ax, panel in zip(axes[0], panels):
        if panel == "code":
            groups = sorted({k for r in code.values() for k in r["pass_at_k"]}, key=int)
            values = {lb: [code[lb]["pass_at_k"].get(k, 0.0) for k in groups] if lb in code else None for lb in labels}
            ax.set_ylabel("pass@k")
            ax.set_ylim(0, 1)
            names = [f"pass@{k}" for k in groups]
        else:
            groups = sorted({d for v in loss.values() for d in v})
            values = {
                lb: [loss[lb][d]["loss"] if d in loss[lb] else 0.0 for d in groups] if lb in loss else None
                for lb in labels
            }
            ax.set_ylabel("validation loss (nats/token)")
            names = groups
        for i, lb in enumerate(labels):
            if values[lb] is not None:
                ax.bar([g + i * width for g in range(len(groups))], values[lb], width, label=lb)
        ax.set_xticks([g + width * (len(labels) - 1) / 2 for g in range(len(groups))], names)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_report(results: list[dict], out_dir: Path, title: str, command: str | None = None) -> tuple[Path, Path]:
    command = command or " ".join(["python -m inference", *map(shlex.quote, sys.argv[1:])])
    png = out_dir / "report.png"
    chart(results, png)
    md = out_dir / "report.md"
    text = markdown(results, title, command, png.name)
    _atomic_write(md, lambda tmp: Path(tmp).write_text(text))
    return md, png
