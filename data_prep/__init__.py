"""Data preparation: raw code/text -> Megatron indexed datasets (`pretrain`), chat -> packed harmony
SFT data (`sft`), and the weighted blends the pretraining recipes read (`blend`).

Run `python -m data_prep --help`. Modules: readers (inputs), filters (code-data heuristics),
pretrain (the parallel, resumable tokenizer), sft (harmony rendering and packing), blend.
"""
