"""Side-by-side report of evaluated checkpoints: Markdown plus a PNG chart.

Inputs are the JSON files `python -m inference eval code|loss` write (each records the checkpoint,
its label and the exact command line). Output, under $WORKSPACE/results/<name>/:
    report.md    pass@k per checkpoint, validation loss / perplexity per dataset, per-problem
                 results (c/n per checkpoint), and every command that produced the numbers
    report.png   pass@k and validation loss as grouped bars
Both are written to a temporary name and renamed, so a reader never sees half a file.

When a code result is on HumanEval, the published HumanEval pass@1 of the comparison models
(`PUBLISHED`) is shown beside the measured rows, marked as published with its source, and a
"Harness settings" section says where a measured row differs from the others or from the
published rows (problem subset, prompt mode, n, temperature, max new tokens).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from inference import published
from kit.fs import atomic_file

# Published HumanEval pass@1 of the models gpt-oss continued on code is compared with (base models,
# raw completion of the original prompts, all 164 problems); every benchmark: inference.compare.
PUBLISHED = tuple({"label": r.model, "pass@1": r.pass1, "source": r.source.cite}
                  for r in published.PUBLISHED if r.benchmark == "HumanEval")  # fmt: skip
SETTINGS = ("problem_set", "n", "temperature", "mode", "max_new_tokens")


def on_humaneval(r: dict) -> bool:
    return r.get("problem_set") == "humaneval" or str(r.get("problems_file", "")).endswith("HumanEval.jsonl.gz")


def settings_notes(code: dict[str, dict]) -> list[str]:
    """One line per way a measured row's harness setting differs from the others or the published rows."""
    notes: list[str] = []
    rows = list(code.items())
    for key in SETTINGS[1:]:
        values = {lb: r.get(key) for lb, r in rows}
        if len({json.dumps(v) for v in values.values()}) > 1:
            notes.append(f"{key} differs between measured rows: " + ", ".join(f"{lb} {v}" for lb, v in values.items()))
    for lb, r in rows:
        if r.get("samples_file"):
            notes.append(f"{lb}: completions made elsewhere ({r['samples_file']}): sampling settings not recorded")
        if on_humaneval(r):
            if len(r["problems"]) != 164:
                notes.append(f"{lb}: {len(r['problems'])} of the 164 HumanEval problems; published rows use all 164")
            if r.get("mode") == "chat":
                notes.append(f"{lb}: chat mode (harmony); published rows are raw completion of the HumanEval prompts")
    return notes


def load_results(paths: list[str | os.PathLike]) -> list[dict]:
    """Result dicts from files, or from the eval_*.json files in directories; ValueError if none."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("eval_*.json"))
            curve = p / "curve.jsonl"
            if curve.is_file():
                files.append(curve)
            if not found and not curve.is_file():
                raise ValueError(f"{p}: no eval_*.json inside (write them with `python -m inference eval ...`)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{p}: no such result file or directory")
    out = []
    for f in files:
        if f.name == "curve.jsonl":
            from inference.curves import read_curve

            rows = read_curve(f)
            cmds = sorted({json.loads(Path(r["file"]).read_text())["command"] for r in rows if Path(r["file"]).is_file()})
            out.append({"kind": "curve", "label": f.parent.name, "rows": rows, "_file": str(f), "commands": cmds})
            continue
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
    with atomic_file(path) as tmp:
        write(tmp)


def _by_kind(results: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({label: code result}, {label: {dataset: loss result}}): loss runs of one label are merged."""
    code = {r["label"]: r for r in results if r["kind"] == "code"}
    loss: dict[str, dict] = {}
    for r in results:
        if r["kind"] == "loss":
            loss.setdefault(r["label"], {}).update(r["datasets"])
    return code, loss


def markdown(results: list[dict], title: str, command: str, chart: str | None, curves_chart: str | None = None) -> str:
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
                n = r["problems"][0]["n"] if r["problems"] else 0
                # EvalPlus: the plus figure (HumanEval+ / MBPP+), and beside it its base tests
                rows = [("", r["pass_at_k"])] if "pass_at_k_base" not in r else \
                    [(" (plus)", r["pass_at_k"]), (" (base)", r["pass_at_k_base"])]  # fmt: skip
                for suffix, table in rows:
                    cells = [f"{table[k]:.4f}" if k in table else "-" for k in ks]
                    lines.append(f"| {label}{suffix} | {len(r['problems'])} | {n} | " + " | ".join(cells) + " |")
        published = any(on_humaneval(r) for r in code.values())
        if published:
            for row in PUBLISHED:
                cells = [f"{row['pass@1']:.4f}" if k == "1" else "-" for k in ks]
                lines.append(f"| {row['label']} (published) | 164 | - | " + " | ".join(cells) + " |")
        lines.append("")
        if published:
            lines += ["Published rows are quoted, not measured here: "
                      + "; ".join(f"{row['label']}: {row['source']}" for row in PUBLISHED) + ".", ""]  # fmt: skip
        notes = settings_notes(code)
        lines += ["## Harness settings", "",
                  "| checkpoint | " + " | ".join(SETTINGS) + " |", "|---" * (1 + len(SETTINGS)) + "|"]  # fmt: skip
        for label in labels:
            if label in code:
                r = code[label]
                lines.append(f"| {label} | " + " | ".join(str(r.get(k, "-")) for k in SETTINGS) + " |")
        lines += [""] + ([f"- {note}" for note in notes] if notes else ["All measured rows used the same settings."])
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
    curve_results = [r for r in results if r["kind"] == "curve"]
    if curve_results:
        sets = sorted({d for c in curve_results for row in c["rows"] for d in row.get("loss", {})})
        lines += ["## Over training (every evaluated checkpoint)", ""]
        if curves_chart:
            lines += [f"![pass@1 and validation loss against tokens seen]({curves_chart})", ""]
        lines += ["| run | iteration | tokens seen | pass@1 | " + " | ".join(f"loss {d}" for d in sets) + " |",
                  "|---" * (4 + len(sets)) + "|"]  # fmt: skip
        for c in curve_results:
            merged: dict[int, dict] = {}
            for row in c["rows"]:
                m = merged.setdefault(row["iteration"], {"tokens": row.get("tokens")})
                if row["kind"] == "code":
                    m["pass1"] = row["pass_at_k"].get("1")
                else:
                    m.setdefault("loss", {}).update(row["loss"])
            for it in sorted(merged):
                m = merged[it]
                p1 = f"{m['pass1']:.4f}" if m.get("pass1") is not None else "-"
                tok = f"{m['tokens']:,}" if m.get("tokens") is not None else "-"
                cells = [f"{m['loss'][d]:.4f}" if d in m.get("loss", {}) else "-" for d in sets]
                lines.append(f"| {c['label']} | {it} | {tok} | {p1} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Commands", "", "Each number above was produced by:", "", "```bash"]
    for r in results:
        lines += r["commands"] if r["kind"] == "curve" else [r["command"]]
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
        if panel == "code" and "1" in groups and any(on_humaneval(r) for r in code.values()):
            for row, style in zip(PUBLISHED, (":", "--", "-.")):
                ax.axhline(row["pass@1"], color="gray", linestyle=style, linewidth=1, label=f"{row['label']} pass@1 (published)")
        ax.set_xticks([g + width * (len(labels) - 1) / 2 for g in range(len(groups))], names)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def curves_chart(curve_results: list[dict], path: Path) -> None:
    """pass@1 and validation loss per dataset against tokens seen (iterations where unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    use_tokens = all(row.get("tokens") is not None for c in curve_results for row in c["rows"])
    x_of = (lambda row: row["tokens"]) if use_tokens else (lambda row: row["iteration"])
    for c in curve_results:
        code = sorted((x_of(r), r["pass_at_k"]["1"]) for r in c["rows"] if r["kind"] == "code" and "1" in r["pass_at_k"])
        if code:
            a1.plot(*zip(*code), marker="o", label=c["label"])
        for d in sorted({d for r in c["rows"] for d in r.get("loss", {})}):
            pts = sorted((x_of(r), r["loss"][d]) for r in c["rows"] if r["kind"] == "loss" and d in r["loss"])
            a2.plot(*zip(*pts), marker="o", label=f"{c['label']} {d}")
    for ax, name in ((a1, "pass@1"), (a2, "validation loss (nats/token)")):
        ax.set_xlabel("tokens seen" if use_tokens else "iteration")
        ax.set_ylabel(name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_report(results: list[dict], out_dir: Path, title: str, command: str | None = None) -> tuple[Path, Path]:
    """report.md, and report.png (bars of the evaluated checkpoints) and/or curves.png (over training)."""
    command = command or " ".join(["python -m inference", *map(shlex.quote, sys.argv[1:])])
    evals = [r for r in results if r["kind"] != "curve"]
    curve_results = [r for r in results if r["kind"] == "curve"]
    png = out_dir / "report.png"
    if evals:
        chart(evals, png)
    cpng = out_dir / "curves.png"
    if curve_results:
        curves_chart(curve_results, cpng)
    md = out_dir / "report.md"
    text = markdown(results, title, command, png.name if evals else None, cpng.name if curve_results else None)
    _atomic_write(md, lambda tmp: Path(tmp).write_text(text))
    return md, png if evals else cpng
