"""Data preparation: raw code/text -> Megatron indexed datasets (`pretrain`), chat -> packed harmony
SFT data (`sft`), and the weighted blends the pretraining recipes read (`blend`).

Run `python -m data_prep --help`. Modules: readers (inputs), filters (code-data heuristics),
decontam (benchmark decontamination), pii (secrets and personal data redaction), pretrain (the
parallel, resumable, one-read tokenizer), sft (harmony rendering and packing), blend.
"""
