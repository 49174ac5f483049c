"""Keep secrets (W&B and HF tokens, passwords) out of printed configs and logs."""

from __future__ import annotations

import os
import re
from typing import Any

SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "NGC_API_KEY")
_SECRET_KEY = re.compile(r"(api_key|token|secret|password)", re.I)
MASK = "***"


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with secret-looking keys and known secret values masked."""
    values = {os.environ[k] for k in SECRET_ENV if os.environ.get(k)}

    def walk(x: Any, key: str = "") -> Any:
        if isinstance(x, dict):
            return {k: walk(v, str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, key) for v in x]
        if isinstance(x, str):
            if x and (_SECRET_KEY.search(key) and not key.endswith(("_id", "_ids", "tokens"))):
                return MASK
            for s in values:
                x = x.replace(s, MASK)
        return x

    return walk(obj)
