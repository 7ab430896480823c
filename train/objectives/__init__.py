"""Training objectives beyond supervised fine-tuning, as plain functions of tensors the trainer
calls (no loop, no config): ``logprobs`` (per-token / per-sequence log-probabilities of the
labelled tokens, full-logit and chunked), ``dpo`` (DPO / cDPO / IPO + SFT term, reference
log-probs from a LoRA model with adapters disabled), ``grpo`` (group advantages and the clipped
policy-gradient loss in GRPO / Dr. GRPO / DAPO / GSPO styles), ``rewards`` (named reward
functions that are the eval harness's scorers)."""
