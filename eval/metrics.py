"""Scoring functions shared by benchmark tasks: exact match, ANLS, grounding IoU.

Each returns a score in [0, 1] for one prediction; tasks average them. Parsing failures are
reported (``parsed=False``) rather than guessed around, so "unparsed" can be counted.
"""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

from data.boxes import iou, on_scale, parse_boxes

THINK_RE = re.compile(r"^.*?</think>", re.DOTALL)


def strip_thinking(text: str) -> str:
    """Drop a ``<think>...</think>`` block (also when the opening tag is missing)."""
    return THINK_RE.sub("", text, count=1).strip() if "</think>" in text else text.strip()


def thinking_truncated(text: str, prompt_opens_thinking: bool = False) -> bool:
    """Reasoning that never closed, so no answer was written: the reply opened ``<think>``, or
    the prompt did (Thinking checkpoints' templates end the generation prompt with it, so their
    replies carry only the closing tag), and ``</think>`` never came (max_new_tokens ran out).
    Such a reply is scored wrong and counted, never searched for an answer."""
    return "</think>" not in text and (prompt_opens_thinking or "<think>" in text)


def prompt_opens_thinking(processor) -> bool:
    """Whether the checkpoint's chat template starts the reply inside ``<think>``."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "?"}]}], tokenize=False,
        add_generation_prompt=True)
    return prompt.rstrip().endswith("<think>")


def normalize(text: str) -> str:
    text = text.strip().lower()
    text = re.sub(r"[\s]+", " ", text)
    return text.strip(" .,!?;:\"'")


def exact_match(prediction: str, golds: list[str]) -> float:
    p = normalize(prediction)
    return float(any(p == normalize(g) for g in golds))


def anls(prediction: str, golds: list[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity for one question (DocVQA): the best
    similarity over the gold answers, zeroed below ``threshold``. The edit distance is
    rapidfuzz's (C, per code point), not a Python loop: answers can be paragraphs long."""
    p = " ".join(prediction.strip().lower().split())
    best = 0.0
    for gold in golds:
        g = " ".join(gold.strip().lower().split())
        if not p and not g:
            return 1.0
        sim = 1.0 - Levenshtein.distance(p, g) / max(len(p), len(g))
        best = max(best, sim if sim >= threshold else 0.0)
    return best


def first_box_iou(prediction: str, gold_box: list[float]) -> tuple[float, bool]:
    """IoU of the *first* predicted box (no best-of-N credit) with ``gold_box``, both on Qwen's
    relative [0, 1000) scale. Returns (iou, parsed); a box with a coordinate off that scale is
    unparsed (0), never mapped off the image."""
    boxes = parse_boxes(prediction)
    if not boxes or not on_scale(boxes[0]):
        return 0.0, False
    return iou(boxes[0], gold_box), True


def box_accuracy(prediction: str, gold_box: list[float], threshold: float = 0.5) -> tuple[float, bool]:
    """Acc@IoU>=threshold of the first predicted box. Returns (score, parsed)."""
    value, parsed = first_box_iou(prediction, gold_box)
    return float(value >= threshold), parsed
