"""gpt-oss recipes for Megatron-Bridge: a registry of named recipes and their default allocation.

`python -m recipes list | show | plan` is the command line; `get(name).build()` returns the
ConfigContainer. Building imports megatron.bridge (about 10 s), so the registry itself stays
import-light: listing recipes needs no Megatron at all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    function: str  # in recipes.gpt_oss
    nodes: int
    gpus_per_node: int
    summary: str
    variant: str | None = None  # a helper in recipes.gpt_oss applied to the base (e.g. fp8)

    def build(self) -> Any:
        """The Megatron-Bridge ConfigContainer of this recipe."""
        module = importlib.import_module("recipes.gpt_oss")
        cfg = getattr(module, self.function)()
        if self.variant:
            cfg = getattr(module, self.variant)(cfg)
        return cfg


def _base(name: str, nodes: int, gpus: int, summary: str) -> list[Recipe]:
    return [Recipe(name, name, nodes, gpus, summary)]


def _with_fp8(recipes: list[Recipe]) -> list[Recipe]:
    """Each GPU recipe also comes as <name>_fp8cs: Hopper FP8 current scaling."""
    out = list(recipes)
    for r in recipes:
        out.append(
            Recipe(
                f"{r.name}_fp8cs",
                r.function,
                r.nodes,
                r.gpus_per_node,
                r.summary + " (FP8 current scaling)",
                "with_fp8_current_scaling",
            )
        )
    return out


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        *_with_fp8(
            _base("gpt_oss_20b_pretrain", 2, 8, "20b from scratch, TP2 PP4 EP4, seq 4096")
            + _base("gpt_oss_120b_pretrain", 8, 8, "120b from scratch, TP2 PP4 EP16, seq 4096")
            + _base("gpt_oss_20b_cpt_code", 2, 8, "20b continued pretraining on code (80%) + replay (20%)")
            + _base("gpt_oss_120b_cpt_code", 8, 8, "120b continued pretraining on code (80%) + replay (20%)")
            + _base("gpt_oss_20b_sft", 1, 8, "20b full SFT on packed harmony chats, EP8")
            + _base("gpt_oss_120b_sft", 4, 8, "120b full SFT on packed harmony chats, PP4 EP8")
            + _base("gpt_oss_20b_lora", 1, 1, "20b LoRA (attention + experts), 1 GPU")
            + _base("gpt_oss_120b_lora", 1, 8, "120b LoRA (attention + experts), EP8")
        ),
        *_base("gpt_oss_tiny_pretrain", 1, 1, "tiny gpt-oss from scratch (CPU)"),
        *_base("gpt_oss_tiny_cpt_code", 1, 1, "tiny gpt-oss continued pretraining on code (CPU)"),
        *_base("gpt_oss_tiny_sft", 1, 1, "tiny gpt-oss full SFT (CPU)"),
        *_base("gpt_oss_tiny_lora", 1, 1, "tiny gpt-oss LoRA (CPU)"),
    ]
}


def get(name: str) -> Recipe:
    if name in RECIPES:
        return RECIPES[name]
    import difflib

    close = difflib.get_close_matches(name, list(RECIPES), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown recipe {name!r}{hint} (python -m recipes list shows all)")


def build(name: str, overrides: list[str] | None = None) -> Any:
    """Build a recipe and apply key=value overrides."""
    from recipes.overrides import apply_overrides

    return apply_overrides(get(name).build(), overrides or [])
