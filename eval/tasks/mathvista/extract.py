"""Rule-based answer extraction and scoring for MathVista.

Why rules first: most model answers end in "Answer: B", "(B)", "\\boxed{12}" or a bare number,
and a deterministic parser makes scores reproducible without a judge. Where the rules find
nothing they say so (``None``) instead of guessing (no nearest-choice fallback), so the task can
count the sample as unparsed or hand it to the optional LLM judge (``judge.py``).

Differences from the reference scorer, on purpose:
- float ``precision`` comes as a float (1.0, 2.0) in the published data; it is converted to an
  int number of decimals (the reference crashes in ``round(x, 1.0)`` so every float question
  scores 0 there);
- list answers are compared element by element (numbers numerically), not as raw strings;
- the reference's extractor is GPT, which turns "<answer>1/2</answer>", "\\frac{1}{2}" and
  "\\boxed{\\frac{1}{2}}" into 0.5 before ``float()``; the rules do the same: the last
  ``<answer>...</answer>`` block is all that is read (a ``\\boxed{}`` inside it narrows it), and
  "a/b" and LaTeX ``\\frac{a}{b}`` (``\\dfrac``, ``\\tfrac``) of numbers read as a / b.
"""

from __future__ import annotations

import math
import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# "The answer is", "Final answer:", "correct option is" ... then the answer itself.
ANSWER_RE = re.compile(
    r"(?:final\s+answer|correct\s+(?:answer|option|choice)|answer|option|choice)\s*"
    r"(?:is|should\s+be|would\s+be|will\s+be|[:：=])\s*[:：]?\s*", re.I)
ANSWER_TAG_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S | re.I)
FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}")
BOXED_RE = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
NUM_RE = re.compile(r"(?<![\w./])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?(?![\d/]))?"
                    r"|(?<![\w./])[-+−]?\.\d+")
EXPONENT_RE = re.compile(r"\^\s*\{?\s*-?\d+\s*\}?")  # cm^2, m^{3}: not the answer's digits
LEAD_LETTER_RE = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?:[.:)]|\s*$))(?!\w)")
PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")


def answer_span(text: str) -> str | None:
    """The text that states the final answer: the last ``\\boxed{}``, else what follows the last
    "answer is"/"Answer:" up to the end of that line. None when neither is present."""
    boxed = BOXED_RE.findall(text)
    if boxed:
        return boxed[-1].strip()
    matches = list(ANSWER_RE.finditer(text))
    if matches:
        rest = text[matches[-1].end():].strip().split("\n")[0]
        return rest.strip().rstrip(".").strip() or None
    return None


def answer_tag(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` block (Qwen's RL-style replies), or None
    when there is none. When there is one, it is the whole answer: nothing outside it is read."""
    tagged = ANSWER_TAG_RE.findall(text)
    return tagged[-1].strip() if tagged else None


def to_number(token: str) -> float:
    """A number as written: "1,234", "−3.5", "1/2" (a / b; ValueError when b is 0)."""
    token = token.replace(",", "").replace("−", "-").replace(" ", "")
    if "/" in token:
        top, bottom = token.split("/")
        if float(bottom) == 0:
            raise ValueError(f"{token!r}: division by zero")
        return float(top) / float(bottom)
    return float(token)


def latex_numbers(text: str) -> str:
    """``\\frac{a}{b}`` (and ``\\dfrac``, ``\\tfrac``) of two numbers written as "a/b"."""
    return FRAC_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)


def numbers(text: str, unit: str | None) -> list[float]:
    if unit:
        text = text.replace(unit, " ")
    text = EXPONENT_RE.sub(" ", latex_numbers(text))
    found = []
    for m in NUM_RE.finditer(text):
        try:
            found.append(to_number(m.group()))
        except ValueError:  # "1/0"
            continue
    return found


def extract_number(text: str, unit: str | None) -> float | None:
    """The first number of the answer span if there is one, else the last number of the text."""
    span = answer_span(text)
    if span is not None:
        found = numbers(span, unit)
        if found:
            return found[0]
    found = numbers(text, unit)
    return found[-1] if found else None


def norm_text(text: str, unit: str | None = None) -> str:
    text = text.strip().lower().replace("−", "-")
    if unit and text.endswith(unit.lower()):
        text = text[: -len(unit)]
    text = re.sub(r"\s+", " ", text).strip(" .,;:!?\"'$")
    return text


def _numeric(text: str) -> float | None:
    try:
        return to_number(latex_numbers(text).strip().rstrip("%°"))
    except ValueError:
        return None


def match_choice(text: str, choices: list[str], unit: str | None) -> str | None:
    """A choice text named by ``text``: exactly equal (numerically, for numeric choices), or the
    only choice contained in it as a whole word."""
    wanted = norm_text(text, unit)
    for choice in choices:
        if norm_text(choice, unit) == wanted:
            return choice
    value = _numeric(wanted)
    if value is not None:
        hits = [c for c in choices if _numeric(norm_text(c, unit)) == value]
        if len(hits) == 1:
            return hits[0]
    contained = [c for c in choices if norm_text(c, unit) and re.search(
        r"(?<![\w.])" + re.escape(norm_text(c, unit)) + r"(?![\w]|\.\d)", text.lower())]
    return contained[0] if len(contained) == 1 else None


def extract_choice(text: str, choices: list[str], unit: str | None = None) -> str | None:
    """The choice text a response picks, or None. Tried in order: the answer span (a letter such
    as "B", "(B)", "B." or a choice text), the whole response as a letter / leading "(B) ...",
    a choice text, and a single distinct "(X)" letter anywhere. Several letters -> None."""
    letters = LETTERS[: len(choices)]

    def letter_of(s: str) -> str | None:
        m = LEAD_LETTER_RE.match(s)
        letter = m and next(g for g in m.groups() if g)
        return choices[letters.index(letter)] if letter and letter in letters else None

    span = answer_span(text)
    if span is not None:
        found = letter_of(span) or match_choice(span, choices, unit)
        if found is not None:
            return found
    found = letter_of(text) or match_choice(text, choices, unit)
    if found is not None:
        return found
    named = {m for m in PAREN_LETTER_RE.findall(text) if m in letters}
    return choices[letters.index(named.pop())] if len(named) == 1 else None


def decimals(precision, gold: str) -> int:
    """Decimals to round to: the stated precision (1.0 -> 1), else those of the gold answer."""
    if precision is not None:
        return int(precision)
    return len(gold.split(".")[1]) if "." in gold else 0


def list_items(text: str) -> list[str] | None:
    """Items of "[1, 2, 3]" (the last bracketed list) or of a bare "1, 2, 3"."""
    brackets = re.findall(r"\[([^\[\]]*)\]", text)
    body = brackets[-1] if brackets else (text if "," in text else None)
    if body is None:
        return None
    items = [i.strip().strip("'\"") for i in body.split(",")]
    return items if all(items) else None


def same_item(pred: str, gold: str, places: int | None, unit: str | None) -> bool:
    p, g = _numeric(norm_text(pred, unit)), _numeric(norm_text(gold, unit))
    if p is not None and g is not None:
        return math.isclose(round(p, places or 0), round(g, places or 0), abs_tol=1e-9) \
            if places is not None else math.isclose(p, g, abs_tol=1e-9)
    return norm_text(pred, unit) == norm_text(gold, unit)


def rule_score(text: str, meta: dict) -> tuple[float, bool]:
    """(score, parsed) of a response already free of thinking, by the row's question and
    answer types (``meta`` is the dataset row)."""
    tagged = answer_tag(text)
    if tagged is not None:
        if not tagged:
            return 0.0, False  # an empty answer block: no answer, and nothing else is read
        text = tagged
    gold, unit = str(meta["answer"]).strip(), meta.get("unit") or None
    if meta["question_type"] == "multi_choice":
        picked = extract_choice(text, list(meta["choices"]), unit)
        return (0.0, False) if picked is None else (float(norm_text(picked) == norm_text(gold)), True)
    kind = meta["answer_type"]
    if kind in ("integer", "float"):
        value = extract_number(text, unit)
        if value is None:
            return 0.0, False
        places = 0 if kind == "integer" else decimals(meta.get("precision"), gold)
        if kind == "integer":  # 3.0 is 3; 3.5 is wrong, not rounded
            return float(math.isclose(value, to_number(gold), abs_tol=1e-9)), True
        return float(math.isclose(round(value, places), round(to_number(gold), places),
                                  abs_tol=1e-9)), True
    if kind == "list":
        golds = list_items(gold) or [gold]
        span = answer_span(text)
        preds = list_items(span) if span is not None else None
        preds = preds or list_items(text)
        if preds is None:
            return 0.0, False
        places = int(meta["precision"]) if meta.get("precision") is not None else None
        ok = len(preds) == len(golds) and all(same_item(p, g, places, unit) for p, g in zip(preds, golds))
        return float(ok), True
    span = answer_span(text)
    picked = span if span is not None else text
    if not picked.strip():
        return 0.0, False
    return float(norm_text(picked, unit) == norm_text(gold, unit)), True
