"""The StarCoder table: `python -m inference report --compare RESULT...`.

One table of models x benchmarks (HumanEval, HumanEval+, MBPP, MBPP+, MultiPL-E per language): the
measured rows (each `eval code` result, grouped by its label) beside the published rows of
StarCoder, StarCoderBase and StarCoder2-15B (inference.published), every published figure with its
source and its sampling, and a mark on every measured cell whose harness settings differ from those
of the published figures in its column (sampling, problem count, prompt mode, MultiPL-E's prompt
variant), each difference spelled out under the table. Printed, and written as report.md and
report.png (grouped bars, published ones hatched) under $WORKSPACE/results/<name>/.

A measured cell is pass@1 (for n > 1 samples: the unbiased estimate, mean c/n); a MultiPL-E result
fills one column per language in it, from its per-problem counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from inference import multiple
from inference.published import PROBLEMS, PUBLISHED, Row, Sampling, Source
from inference.report import on_humaneval
from kit.fs import atomic_file

FIXED = ("HumanEval", "HumanEval+", "MBPP", "MBPP+")


@dataclass
class Cell:
    """One measured figure: a label's pass@1 on one benchmark, and the settings that produced it."""

    pass1: float
    problems: int
    result: dict = field(repr=False)  # the eval_code.json record


def _pass1_of(problems: list[dict]) -> float:
    return sum(p["c"] / p["n"] for p in problems) / len(problems)


def benchmark_cells(r: dict) -> dict[str, Cell]:
    """{benchmark: Cell} of one eval_code.json record (inference.published names the benchmarks)."""
    probs = r["problems"]
    pset = r.get("problem_set")
    if pset and pset.startswith("multipl-e"):
        by_column: dict[str, list[dict]] = {}  # MultiPL-E's HumanEval rows, or its MBPP rows ("mbpp_...")
        for p in probs:
            prefix = "MultiPL-E (MBPP) " if p["task_id"].startswith("mbpp_") else "MultiPL-E "
            by_column.setdefault(prefix + multiple.language(p.get("language") or "py").name, []).append(p)
        return {column: Cell(_pass1_of(ps), len(ps), r) for column, ps in by_column.items()}
    names = {"humaneval": "HumanEval", "mbpp": "MBPP", "humaneval+": "HumanEval+", "mbpp+": "MBPP+", "kit": "kit"}
    name = names.get(pset) or ("HumanEval" if on_humaneval(r) else Path(r.get("problems_file") or "file").name)
    return {name: Cell(r["pass_at_k"]["1"] if "1" in r["pass_at_k"] else _pass1_of(probs), len(probs), r)}


def _measured_sampling(r: dict) -> Sampling | None:
    if r.get("samples_file"):
        return None  # completions made elsewhere: not recorded
    return Sampling(n=r.get("n"), temperature=r.get("temperature"), top_p=r.get("top_p"))


def differences(bench: str, cell: Cell, source: Source) -> list[str]:
    """How a measured cell's settings differ from those behind one published source's figure."""
    r, out = cell.result, []
    measured = _measured_sampling(r)
    want = source.sampling
    if measured is None:
        out.append(f"completions made elsewhere ({r['samples_file']}): sampling not recorded")
    elif want.n is None and want.temperature is None:
        out.append(f"sampling {measured.describe()}; the source states none")
    else:
        greedy = measured.temperature == 0.0
        if greedy != (want.temperature == 0.0):
            out.append(f"sampling {measured.describe()}, published {want.describe()}")
        elif not greedy:
            for key in ("n", "temperature", "top_p"):
                got, pub = getattr(measured, key), getattr(want, key)
                if pub is not None and got != pub:
                    out.append(f"{key} {got}, published {pub}")
    expected = PROBLEMS.get(bench)
    if expected is not None and cell.problems != expected:
        out.append(f"{cell.problems} problems, published {expected}")
    if r.get("mode") == "chat":
        out.append("chat mode (harmony); published rows are raw completion")
    if bench.startswith("MultiPL-E") and r.get("prompt_variants") != ["reworded"]:
        out.append(f"prompt variant {', '.join(r.get('prompt_variants') or ['not stated by the rows'])}; "
                   "published: MultiPL-E's reworded prompts")  # fmt: skip
    return out


def _order(benchmarks: set[str]) -> list[str]:
    langs = [f"MultiPL-E {lang.name}" for lang in multiple.LANGUAGES]
    known = [b for b in (*FIXED, *langs) if b in benchmarks]
    return known + sorted(benchmarks - set(known))


@dataclass
class Table:
    benchmarks: list[str]
    measured: dict[str, dict[str, Cell]]  # label -> benchmark -> cell
    published: dict[str, dict[str, Row]]  # model -> benchmark -> row
    sources: list[Source]
    notes: dict[tuple[str, str], list[str]]  # (label, benchmark) -> differences from the published figures


def build(results: list[dict]) -> Table:
    """The table of the code results among `results`; ValueError if there is none, or if one label has
    two results on one benchmark."""
    code = [r for r in results if r.get("kind") == "code"]
    if not code:
        raise ValueError("--compare needs `eval code` results (eval_code.json); none among the inputs")
    measured: dict[str, dict[str, Cell]] = {}
    for r in code:
        try:
            cells = benchmark_cells(r)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise ValueError(f"{r['_file']}: not a whole eval_code.json ({type(e).__name__}: {e}); rewrite it with "
                             "`python -m inference eval code`") from None  # fmt: skip
        for bench, cell in cells.items():
            row = measured.setdefault(r["label"], {})
            if bench in row:
                raise ValueError(f"two results of label {r['label']!r} on {bench}: {row[bench].result['_file']} and "
                                 f"{r['_file']}; give one of them (or another --label when evaluating)")  # fmt: skip
            row[bench] = cell
    benches = set().union(*(row.keys() for row in measured.values()))
    published: dict[str, dict[str, Row]] = {}
    for p in PUBLISHED:
        published.setdefault(p.model, {})[p.benchmark] = p
        benches.add(p.benchmark)
    order = _order(benches)
    sources = list(dict.fromkeys(p.source for p in PUBLISHED))
    notes: dict[tuple[str, str], list[str]] = {}
    for label, row in measured.items():
        for bench, cell in row.items():
            against: dict[str, list[str]] = {}  # a difference -> the sources in the column it holds for
            for s in dict.fromkeys(p.source for p in PUBLISHED if p.benchmark == bench):
                for d in differences(bench, cell, s):
                    against.setdefault(d, []).append(str(sources.index(s) + 1))
            if against:
                notes[(label, bench)] = [f"{d} (vs [{', '.join(nums)}])" for d, nums in against.items()]
    return Table(order, measured, published, sources, notes)


def markdown(table: Table, title: str, command: str, chart: str | None, results: list[dict]) -> str:
    t = table
    lines = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `{command}`.", ""]
    if chart:
        lines += [f"![pass@1 per benchmark]({chart})", ""]
    lines += ["## pass@1", "", "| model | " + " | ".join(t.benchmarks) + " |", "|---" * (1 + len(t.benchmarks)) + "|"]
    marks: dict[tuple[str, str], int] = {}
    for label, row in t.measured.items():
        cells = []
        for b in t.benchmarks:
            if b not in row:
                cells.append("-")
                continue
            text = f"{row[b].pass1:.4f}"
            if (label, b) in t.notes:
                marks[(label, b)] = len(marks) + 1
                text += f" *({marks[(label, b)]})*"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for model, row in t.published.items():
        cells = [f"{row[b].pass1:.4f} [{t.sources.index(row[b].source) + 1}]" if b in row else "-" for b in t.benchmarks]
        lines.append(f"| {model} (published) | " + " | ".join(cells) + " |")
    lines += ["", "Published figures are quoted, not measured here. Sources, and the sampling each states:", ""]
    lines += [f"{i}. {s.cite}, {s.url}; sampling: {s.sampling.describe()}" for i, s in enumerate(t.sources, 1)]
    lines += ["", "## Where a measured row's settings differ from the published ones", ""]
    if marks:
        for (label, b), m in marks.items():
            lines.append(f"({m}) {label}, {b}: " + "; ".join(t.notes[(label, b)]))
            lines.append("")
    else:
        lines += ["Every measured cell used the settings of the published figures in its column.", ""]
    lines += ["## Measured settings", "", "| model | benchmark | problems | n | temperature | top_p | mode | file |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, row in t.measured.items():
        for b, c in row.items():
            r = c.result
            lines.append(f"| {label} | {b} | {c.problems} | {r.get('n')} | {r.get('temperature')} | {r.get('top_p')} | "
                         f"{r.get('mode')} | `{r['_file']}` |")  # fmt: skip
    lines += ["", "## Commands", "", "Each measured number above was produced by:", "", "```bash"]
    lines += [r["command"] for r in results if r.get("kind") == "code"] + [command, "```", ""]
    return "\n".join(lines)


def chart(table: Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table
    series = [(lb, {b: c.pass1 for b, c in row.items()}, None) for lb, row in t.measured.items()]
    series += [(f"{m} (published)", {b: r.pass1 for b, r in row.items()}, "//") for m, row in t.published.items()]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(t.benchmarks)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, values, hatch) in enumerate(series):
        xs = [g + i * width for g, b in enumerate(t.benchmarks) if b in values]
        ax.bar(xs, [values[b] for b in t.benchmarks if b in values], width, label=name, hatch=hatch,
               edgecolor="black" if hatch else None, linewidth=0.3)  # fmt: skip
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(t.benchmarks))], t.benchmarks,
                  rotation=45, ha="right", fontsize=8)  # fmt: skip
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_comparison(results: list[dict], out_dir: Path, title: str, command: str) -> tuple[Path, Path, str]:
    """report.md and report.png of the table; returns their paths and the markdown (printed by the CLI)."""
    table = build(results)
    png, md = out_dir / "report.png", out_dir / "report.md"
    chart(table, png)
    text = markdown(table, title, command, png.name, results)
    with atomic_file(md) as tmp:
        Path(tmp).write_text(text)
    return md, png, text
