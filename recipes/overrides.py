"""`key=value` overrides on a ConfigContainer, validated.

Keys are dotted attribute paths (`model.tensor_model_parallel_size=4`, `train.global_batch_size=256`).
Values are parsed as YAML scalars or lists (`true`, `3e-4`, `null`, `[a, b]`). An unknown key is an
error that names the closest valid keys; a value of the wrong type (a string for an int field, say)
is an error that names the expected type.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import torch
import yaml


class OverrideError(ValueError):
    pass


def _keys(obj: Any) -> list[str]:
    if dataclasses.is_dataclass(obj):
        # plus public attributes set on the instance: the class-swapped DistillationProvider's fields
        # omit its student provider's, and the teacher carries pretrained_checkpoint
        names = [f.name for f in dataclasses.fields(obj)]
        return names + [k for k in vars(obj) if not k.startswith("_") and k not in names]
    return [k for k in vars(obj) if not k.startswith("_")] if hasattr(obj, "__dict__") else []


def _parse(text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert `value` to the type of `current` where that is unambiguous; reject mismatches."""
    if value is None or current is None:
        return value
    if isinstance(current, torch.dtype):
        dtype = getattr(torch, str(value), None)
        if not isinstance(dtype, torch.dtype):
            raise OverrideError(f"{key}={value!r}: expected a torch dtype name such as bfloat16 or float32")
        return dtype
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise OverrideError(f"{key}={value!r}: expected true or false")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise OverrideError(f"{key}={value!r}: expected an integer (current value {current!r})")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OverrideError(f"{key}={value!r}: expected a number (current value {current!r})")
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        return str(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def apply_override(cfg: Any, item: str) -> None:
    if "=" not in item:
        raise OverrideError(f"override {item!r} is not key=value (for example train.train_iters=100)")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    obj = cfg
    for depth, part in enumerate(parts):
        valid = _keys(obj)
        if part not in valid:
            prefix = ".".join(parts[:depth])
            full = [f"{prefix}.{k}" if prefix else k for k in valid]
            close = difflib.get_close_matches(key, full, n=3, cutoff=0.5) or difflib.get_close_matches(
                part, valid, n=3, cutoff=0.5
            )
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = f" in {prefix}" if prefix else ""
            raise OverrideError(f"unknown config key {key!r}: no field {part!r}{where}{hint}")
        if depth < len(parts) - 1:
            obj = getattr(obj, part)
            if obj is None:
                raise OverrideError(f"cannot set {key!r}: {'.'.join(parts[: depth + 1])} is None in this recipe")
    last = parts[-1]
    setattr(obj, last, _coerce(key, getattr(obj, last), _parse(text)))


def apply_overrides(cfg: Any, items: list[str]) -> Any:
    for item in items:
        apply_override(cfg, item)
    return cfg
