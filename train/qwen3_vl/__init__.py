"""Everything this repo knows about Qwen3-VL (dense and MoE) as transformers builds it, in one
place, after torchtitan's ``ModelSpec`` + ``StateDictAdapter``:

- ``names``: module and parameter names (language model, experts, vision tower, mergers) and
  the vision modules a given config has;
- ``state_dict``: how tensors are named and laid out in files: the hub expert layout, the
  DeepSpeed AutoEP module map and the AutoEP -> HF fused-expert mapping;
- ``shapes``: the published Qwen3-VL-8B / 30B-A3B configs;
- ``flops``: parameter counts, model FLOPs of a step and MFU, from a config.

Every count or shape is read from the model's config; nothing assumes a model size.
"""
