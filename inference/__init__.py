"""Generation and evaluation of gpt-oss checkpoints (`python -m inference`, see inference/USAGE.md).

- backends.py   HF (transformers, KV cache) and Megatron (conversion.megatron_io checkpoints, LoRA)
- sampling.py   the shared decoding loop: greedy, temperature, top-k, top-p, seed, stops, streaming
- chat.py       harmony prompts (data_prep.sft's renderer) and parsing of completions
- codeeval.py   HumanEval-style problems, completions, pass@k
- sandbox.py    running generated code: namespaces, read-only filesystem, no network, limits
- loss.py       validation loss / perplexity on indexed datasets
- report.py     Markdown + PNG comparison of checkpoints
"""
