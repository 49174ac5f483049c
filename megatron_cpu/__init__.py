"""Megatron-Core and Megatron-Bridge where their CUDA and Transformer Engine assumptions do not hold
(CPU dev boxes, CI), inert where they do. Nothing here runs at import: the entry points call it.

- compat.py    `import_bridge()`: import megatron.bridge without Transformer Engine (Python 3.11)
- model.py     building and running gpt-oss Megatron models on CPU (CPU-safe layer spec, process
               groups, `build_model` on the GPU when there is one)
- training.py  the kit's GPU check (`cuda_available`), its TORCHDYNAMO policy (`eager_without_gpu`),
               and `cpu_training()`: Megatron-Bridge's real pretrain()/finetune() on a CPU
"""
