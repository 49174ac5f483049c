"""The recipe registry: `@recipe(...)` on each builder in recipes/gpt_oss.py records its default
layout and allocation where the recipe is defined. Imports nothing heavy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gptoss.arch import EXPERT_TENSOR_PARALLEL


@dataclass(frozen=True)
class Layout:
    """Parallel layout: what the planner checks and what the SLURM scripts allocate."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    cp: int = 1
    vpp: int | None = None
    etp: int = EXPERT_TENSOR_PARALLEL  # gptoss.arch says why it stays 1
    sp: bool = False

    def describe(self) -> str:
        """'TP2 PP4 EP4 SP' (sizes above 1 only; '1 GPU' for none)."""
        parts = [f"{k.upper()}{v}" for k, v in (("tp", self.tp), ("pp", self.pp), ("vpp", self.vpp or 1), ("ep", self.ep), ("cp", self.cp)) if v > 1]
        if self.sp and self.tp > 1:
            parts.append("SP")
        return " ".join(parts) or "no model parallelism"


@dataclass(frozen=True)
class Recipe:
    name: str
    builder: Callable[[Layout], Any]  # returns the Megatron-Bridge ConfigContainer
    layout: Layout
    nodes: int
    gpus_per_node: int
    what: str
    variant: Callable[[Any], Any] | None = None  # a helper applied to the base (e.g. fp8)

    @property
    def summary(self) -> str:
        return f"{self.what}, {self.layout.describe()}"

    def build(self) -> Any:
        """The Megatron-Bridge ConfigContainer of this recipe."""
        cfg = self.builder(self.layout)
        return self.variant(cfg) if self.variant else cfg


RECIPES: dict[str, Recipe] = {}


def recipe(
    layout: Layout,
    *,
    nodes: int,
    gpus_per_node: int,
    what: str,
    variants: dict[str, tuple[Callable[[Any], Any], str]] | None = None,
):
    """Register the decorated builder as a recipe named after it, with this default layout and
    allocation; each variant {suffix: (helper, words)} also as <name>_<suffix>, the helper applied."""

    def register(fn: Callable[[Layout], Any]) -> Callable[[Layout], Any]:
        RECIPES[fn.__name__] = Recipe(fn.__name__, fn, layout, nodes, gpus_per_node, what)
        for suffix, (helper, words) in (variants or {}).items():
            name = f"{fn.__name__}_{suffix}"
            RECIPES[name] = Recipe(name, fn, layout, nodes, gpus_per_node, f"{what} ({words})", helper)
        return fn

    return register
