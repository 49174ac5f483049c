"""Published pass@1 of the models a continued gpt-oss is compared with: StarCoder, StarCoderBase and
StarCoder2-15B, every figure with its source and the sampling that source states. Quoted, never
measured here; `python -m inference report` shows them beside measured rows (inference.report).

Benchmarks (the keys of `PUBLISHED` rows and of inference.report.benchmark_of):
    "HumanEval"            OpenAI's 164 problems, raw completion of the original prompts
    "MBPP"                 the 500 test problems (task_id 11-510), bigcode-evaluation-harness's prompt
    "HumanEval+", "MBPP+"  EvalPlus's plus tests (its MBPP+ is a subset of MBPP: 378 or 399 problems)
    "MultiPL-E <language>" MultiPL-E's HumanEval translation (inference.multiple's Language names:
                           "C++", "Java", ...), the dataset's reworded prompts

Only figures that could be checked against their source are here. Not yet transcribed (the sources
were not at hand): StarCoderBase's MultiPL-E rows other than C++ and StarCoder2-15B's MultiPL-E
table (arXiv:2402.19173); add them as rows below, with their source, when checked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """How a source drew the samples its pass@1 comes from; None: the source does not say."""

    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    def describe(self) -> str:
        if self.temperature == 0.0:
            return "greedy (n=1)"
        if self.n is None and self.temperature is None:
            return "not stated by the source"
        parts = [f"n={self.n}" if self.n else "", f"T={self.temperature:g}" if self.temperature is not None else "",
                 f"top-p {self.top_p:g}" if self.top_p is not None else ""]  # fmt: skip
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class Source:
    cite: str
    url: str
    sampling: Sampling


@dataclass(frozen=True)
class Row:
    model: str
    benchmark: str
    pass1: float
    source: Source


GREEDY = Sampling(n=1, temperature=0.0)
UNSTATED = Sampling()

STARCODER_CARD = Source(
    "StarCoder model card (model-index), the figures of Li et al. 2023, StarCoder: may the source be with you! "
    "(arXiv:2305.06161)", "https://huggingface.co/bigcode/starcoder", UNSTATED)  # fmt: skip
STARCODERBASE_CARD = Source(
    "StarCoderBase model card (model-index), the figures of Li et al. 2023 (arXiv:2305.06161)",
    "https://huggingface.co/bigcode/starcoderbase-megatron", UNSTATED)  # fmt: skip
STARCODER2_PAPER = Source(
    "Lozhkov et al. 2024, StarCoder 2 and The Stack v2: The Next Generation (arXiv:2402.19173)",
    "https://arxiv.org/abs/2402.19173", UNSTATED)  # fmt: skip
EVALPLUS_LEADERBOARD = Source(
    "EvalPlus leaderboard, results.json (github.com/evalplus/evalplus.github.io at 02023dd8); pass@1 by greedy decoding",
    "https://evalplus.github.io/leaderboard.html", GREEDY)  # fmt: skip

# StarCoder's MultiPL-E rows from its model card, under inference.multiple's Language names (Ruby's
# 1.24% is the card's figure)
_STARCODER_MULTIPL = {"C++": 0.3155, "Java": 0.3022, "JavaScript": 0.3079, "TypeScript": 0.3229, "Go": 0.1761,
                      "Rust": 0.2184, "PHP": 0.2608, "Ruby": 0.0124, "Lua": 0.2389, "Bash": 0.1046,
                      "Python": 0.3357}  # fmt: skip

PUBLISHED: tuple[Row, ...] = (
    Row("StarCoder-15B", "HumanEval", 0.336, STARCODER_CARD),
    Row("StarCoder-15B", "MBPP", 0.527, STARCODER_CARD),
    *(Row("StarCoder-15B", f"MultiPL-E {lang}", v, STARCODER_CARD) for lang, v in _STARCODER_MULTIPL.items()),
    Row("StarCoder-15B", "HumanEval+", 0.293, EVALPLUS_LEADERBOARD),
    Row("StarCoder-15B", "MBPP+", 0.461, EVALPLUS_LEADERBOARD),
    Row("StarCoderBase-15B", "HumanEval", 0.304, STARCODERBASE_CARD),
    Row("StarCoderBase-15B", "MBPP", 0.490, STARCODERBASE_CARD),
    Row("StarCoderBase-15B", "MultiPL-E C++", 0.3056, STARCODERBASE_CARD),
    Row("StarCoder2-15B", "HumanEval", 0.463, STARCODER2_PAPER),
    Row("StarCoder2-15B", "MBPP", 0.662, STARCODER2_PAPER),
    Row("StarCoder2-15B", "HumanEval+", 0.378, EVALPLUS_LEADERBOARD),
)

# The problem count each published benchmark figure is over (MultiPL-E's differ by language: None)
PROBLEMS = {"HumanEval": 164, "MBPP": 500, "HumanEval+": 164, "MBPP+": None}
