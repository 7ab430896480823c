"""Reward functions named by import path in GRPO runs of the tiny random model (tests, the RL
benchmark): a signal that model can learn in a few CPU steps, which the eval scorers on its
gibberish replies do not give."""

from __future__ import annotations


def starts_with_letter(completion: str, sample) -> float:
    """1 when the completion starts with an ASCII letter (about 1 in 5 of a random model's)."""
    return float(bool(completion) and completion[0].isascii() and completion[0].isalpha())
