"""Secrets never reach printed configs."""

from __future__ import annotations

from kit.secrets import MASK, redact


def test_redacts_secret_keys_and_known_values(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-123")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    cfg = {
        "logger": {"wandb_api_key": "x", "wandb_project": "p", "note": "key is wandb-secret-123"},
        "env": ["HF_TOKEN=hf_abcdef", "OTHER=1"],
        "tokenizer": {"eod_token_id": 5, "special_tokens": "keep"},
    }
    out = redact(cfg)
    assert out["logger"]["wandb_api_key"] == MASK and out["logger"]["wandb_project"] == "p"
    assert "wandb-secret-123" not in str(out) and "hf_abcdef" not in str(out)
    assert out["env"][1] == "OTHER=1"
    assert out["tokenizer"] == {"eod_token_id": 5, "special_tokens": "keep"}
