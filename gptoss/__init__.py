"""gpt-oss facts the whole kit shares: architecture, tokenizer, workspace layout, compatibility shims."""
