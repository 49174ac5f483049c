"""Benchmark decontamination: drop every document that contains a benchmark's problem or solution.

What counts as benchmark material, per problem of each set (the built-in HumanEval through the
shared loader `inference.problems`, or a user's file in HumanEval or MBPP format):
- `prompt`: the prompt as given (imports, signature and docstring),
- `docstring`: each triple-quoted string of the prompt, and its description alone (the text before
  the first example line: `>>>`, `assert`, "Example"/"For example"),
- `solution`: the canonical solution (MBPP: `code`).

Matching, as BigCode did for StarCoder (exact substring after normalization), made robust to copies
reformatted or re-commented: both sides are reduced to their ASCII letters and digits, lower-cased,
with everything else deleted (whitespace runs, line endings, indentation, punctuation, quotes and
comment leaders such as `#`, `//`, ` * `); bytes outside ASCII are kept as they are. A document is
contaminated when its normalized text contains a normalized needle.

Strings too short to be evidence are exempt: a needle whose normalized form has fewer than
`min_chars` (default MIN_CHARS = 24) letters and digits is not searched. That exempts the one- and
two-line trivial solutions (`return x + y` -> "returnxy", 8 characters; `return
sorted(list(set(l)))`, 20; `return len(set(string.lower()))`, 23), the role of BigCode's
hand-written HUMAN_EVAL_STRINGS_OK list, without a list to maintain. Chosen on real code: at 24,
every HumanEval prompt, every docstring but two ("Add two numbers x and y" without its examples,
and HumanEval/64's "Add more test cases."), and 143 of its 164 solutions are searched, and 636 MB of real
code (Go and Java from Debian's golang-1.19-src and openjdk-17-source, and the venv's Python)
contain no hit at all; the manifest lists what was exempt.

`ngram=N` (optional) adds every window of N consecutive words (identifiers and numbers) of each
solution and docstring as a needle, so a copy that changed a few lines is still caught; windows are
subject to the same `min_chars`. It finds generic code too: on the venv's Python, 13-word windows
of HumanEval/40 (three nested index loops) and HumanEval/105 (a "One".."Nine" dict) hit two sympy
files, where the exact mode hits none.

Many needles over terabytes: one Aho-Corasick automaton (pyahocorasick) holds them all, so a
document is scanned once, in C, whatever the number of needles; that scan runs on a coarser form
of the text (without the letters a, e, i, o, u, s, t, on both sides: ~45% less to scan), and only a
document it fires on is matched again exactly. Cost in the pipeline: bench/data_prep_throughput.md.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIN_CHARS = 24
FIELDS = ("prompt", "docstring", "solution")

# bytes.translate deletes these: every ASCII byte that is not a letter or digit (non-ASCII stays).
_DELETE = bytes(b for b in range(128) if not chr(b).isalnum())
# The pre-filter's text also loses the commonest letters of code and English: deleting the same
# characters from both sides keeps every true match (a substring stays a substring), the text to
# scan shrinks by ~45% and the needles stay >= 11 characters long, so that it almost never fires
# on clean code (0 of 6,010 Go/Java files); where it fires, the exact match decides.
_COARSE = b"aeioust"
_DELETE_COARSE = _DELETE + _COARSE
_WORD = re.compile(r"[A-Za-z0-9]+")
_TRIPLE = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
_EXAMPLE = re.compile(r"^\s*(>>>|assert\b|example|for example|e\.g\.|for instance)", re.I | re.M)


def normalize(text: str | bytes) -> str:
    """ASCII letters and digits of `text`, lower-cased (non-ASCII bytes kept), as a latin-1 str
    of the UTF-8 bytes: a one-byte-per-character string the automaton scans fastest."""
    b = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return b.lower().translate(None, _DELETE).decode("latin-1")


def docstrings(prompt: str) -> list[str]:
    """Each triple-quoted string of a prompt and, where it has examples, its description alone."""
    out = []
    for m in _TRIPLE.finditer(prompt):
        doc = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        if not doc:
            continue
        out.append(doc)
        ex = _EXAMPLE.search(doc)
        if ex and ex.start() > 0:
            out.append(doc[: ex.start()].strip())
    return out


def _windows(text: str, n: int) -> list[str]:
    words = _WORD.findall(text)
    if len(words) <= n:
        return []  # the whole string is a needle already
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


@dataclass
class DecontamConfig:
    """Which benchmark sets to remove, and how strictly."""

    sources: list[str] = field(default_factory=list)  # "humaneval", "kit" or JSONL paths
    min_chars: int = MIN_CHARS
    ngram: int = 0  # 0: whole strings only; N: also N-word windows of solutions and docstrings

    @classmethod
    def parse(cls, spec: str, min_chars: int = MIN_CHARS, ngram: int = 0) -> DecontamConfig:
        """From the CLI: "humaneval,path/mbpp.jsonl"."""
        sources = [s.strip() for s in spec.split(",") if s.strip()]
        if not sources:
            raise ValueError(f"--decontaminate {spec!r}: name a set, e.g. --decontaminate humaneval[,FILE.jsonl]")
        if min_chars < 1 or ngram < 0:
            raise ValueError(f"--decontam-min-chars {min_chars} / --decontam-ngram {ngram}: use >= 1 / >= 0")
        return cls(sources, min_chars, ngram)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Needle:
    benchmark: str
    task_id: str
    field: str


class Matcher:
    """The needles of every configured problem set in one automaton; `find` reports which matched."""

    def __init__(self, cfg: DecontamConfig) -> None:
        import ahocorasick

        from inference.problems import load, resolve

        self.cfg = cfg
        self.needles: list[Needle] = []
        self.sources: dict[str, dict[str, Any]] = {}
        self._auto = ahocorasick.Automaton()
        by_text: dict[str, list[int]] = {}
        names = [s if s in ("humaneval", "kit") else Path(s).name.split(".")[0] for s in cfg.sources]
        for spec, name in zip(cfg.sources, names):
            if names.count(name) > 1:
                name = str(spec)  # two files with one stem: keep them apart by path
            path = resolve(spec)
            problems = load(spec)  # ValueError naming the file and line for anything malformed
            searched, exempt = 0, []
            for p in problems:
                fields = [("prompt", p.prompt), *(("docstring", d) for d in docstrings(p.prompt))]
                fields.append(("solution", p.canonical_solution))
                n_whole = len(fields)
                if cfg.ngram:
                    fields += [("solution", w) for w in _windows(p.canonical_solution, cfg.ngram)]
                    fields += [("docstring", w) for d in docstrings(p.prompt) for w in _windows(d, cfg.ngram)]
                for k, (fname, text) in enumerate(fields):
                    norm = normalize(text)
                    if not norm:
                        continue
                    if len(norm) < cfg.min_chars:
                        if k < n_whole:
                            exempt.append(f"{p.task_id}:{fname}")
                        continue
                    ids = by_text.setdefault(norm, [])
                    ids.append(len(self.needles))
                    self.needles.append(Needle(name, p.task_id, fname))
                    searched += 1
            self.sources[name] = {
                "path": str(path),
                "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                "problems": len(problems),
                "needles": searched,
                # whole strings exempt as too short (n-gram windows are not listed)
                "exempt": sorted(set(exempt)),
            }
        self._coarse = ahocorasick.Automaton()
        self._always_exact = False
        for norm, ids in by_text.items():
            self._auto.add_word(norm, tuple(ids))
            coarse = norm.encode("latin-1").translate(None, _COARSE).decode("latin-1")
            if coarse:
                self._coarse.add_word(coarse, 0)
            else:
                self._always_exact = True  # a needle made of the deleted letters only: no pre-filter
        self.empty = not by_text
        if not self.empty:
            self._auto.make_automaton()
            self._coarse.make_automaton()

    def find(self, text: str | bytes) -> list[Needle]:
        """The needles `text` contains (empty: clean). One scan of a coarser normalization (see
        _COARSE), which clean text nearly always passes; then, only where it fired, the exact
        normalization, listing every needle found for the report."""
        if self.empty:
            return []
        b = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        if not self._always_exact:
            coarse = b.lower().translate(None, _DELETE_COARSE).decode("latin-1")
            if next(self._coarse.iter(coarse), None) is None:
                return []
        hay = normalize(b)
        if next(self._auto.iter(hay), None) is None:
            return []
        hits = {i for _, ids in self._auto.iter(hay) for i in ids}
        return [self.needles[i] for i in sorted(hits)]

    def summary(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "sources": self.sources}
