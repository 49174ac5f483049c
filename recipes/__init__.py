"""gpt-oss recipes for Megatron-Bridge: a registry of named recipes and their default allocation.

`python -m recipes list | show | plan` is the command line; `get(name).build()` returns the
ConfigContainer. The recipes are registered where they are defined (recipes/gpt_oss.py, recipes/distill.py and recipes/qat.py, `@recipe`
of recipes/registry.py). Building imports megatron.bridge (about 10 s); listing needs no Megatron.
"""

from __future__ import annotations

from typing import Any

from recipes import distill, gpt_oss, qat  # noqa: F401 - register the recipes (import no Megatron)
from recipes.registry import RECIPES, Layout, Recipe, recipe

__all__ = ["RECIPES", "Layout", "Recipe", "build", "get", "recipe"]


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
