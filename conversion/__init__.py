"""HF <-> Megatron conversion of gpt-oss checkpoints (`python -m conversion`, see README).

- hf_io.py         HF checkpoints: reading (bf16 or MXFP4 experts), the sharded safetensors writer
- mxfp4.py         the MXFP4 codec of the released experts (E2M1 values, E8M0 scales), both ways
- megatron_dir.py  the on-disk layout of a Megatron checkpoint directory (tracker, iterations, sidecar)
- megatron_io.py   import / export / loading: the one reader of Megatron checkpoints (full weights or a
                   LoRA run with its base), the provider setup, the layout check
- streaming.py     the default engine: tensor by tensor through Megatron's own save/load, no model built
- lora.py          LoRA runs: adapters attached to their base, merged, or saved as HF PEFT
- validate.py      weights and logits of a conversion against its source
- random_init.py   random-weight checkpoints of the real architecture (tests, demo, benchmarks)
"""
