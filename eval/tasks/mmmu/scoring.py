"""MMMU answer parsing: multiple-choice letters and open (numeric / short text) answers.

Written for MMMU's reference scorer's *intent* (MMMU/eval/utils/eval_utils.py), with two
deliberate departures: nothing is guessed when a response does not parse (the reference and
lmms-eval pick a random letter; here it scores 0 and counts as unparsed), and a response that
names several letters without saying which is its answer is ambiguous, hence unparsed, rather
than credited with its first or last letter.

Multiple choice, tried in order (the first tier that decides wins):

1. an explicit statement, "the answer is (B)", "Answer: B", "correct option: B": the *last*
   one wins (models restate or correct themselves: "A is wrong; the answer is C");
2. a letter that *is* the response ("B", "(B)", "**B.**");
3. letters marked as options anywhere ("B. Paris", "(B)", " B)", " B:"), or failing those bare
   capital letters (not an article "A cat" or pronoun "I think"): exactly one distinct letter
   decides, several ("(A) or (B)") are ambiguous (unparsed);
4. option text: exactly one option's text appears in the response as whole words (an option
   contained in a longer matching option, "red" in "dark red", yields to it).

Open questions: the part of the response after its last strong answer cue ("answer is",
"Answer:", "=") or else its last weak one ("therefore", "so", "is") is the key text; every number
in it (in the whole response if it has none) is a candidate (thousands commas, currency, units
and "%" dropped; "1/2" read as 0.5); several candidates may each match, as in the reference. A numeric gold matches a candidate equal after
rounding to 2 decimals (the reference's rule) or within 0.1% relative error; a text gold matches
when, normalised (lower case, punctuation and articles dropped), it equals the key text or appears
in it as whole words. Any gold of a list matches.
"""

from __future__ import annotations

import ast
import re

from eval.metrics import strip_thinking

LETTERS = "ABCDEFGHIJ"

# Tier 1: "answer is B", "Answer: (B)", "the correct option is B", "choice B".
_EXPLICIT = re.compile(r"\b(?:answer|option|choice)s?\b(?:\s+(?:is|would\s+be|should\s+be|=))?"
                       r"\s*[:=]?\s*(?:\*\*)?\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE)
_WHOLE = re.compile(r"^\(?([A-J])\)?[.:)]?$")
_MARKED = re.compile(r"\(([A-J])\)|(?:^|(?<=\s))([A-J])[.:)](?=\s|$)")
_BARE = re.compile(r"(?<![\w(])([A-J])(?![\w)])")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
# Answer cues: a strong one ("the answer is") beats weak ones ("so", "is") wherever they stand.
_STRONG_CUES = re.compile(r"answer\s+is|answer\s*:|final\s+answer|=", re.IGNORECASE)
_WEAK_CUES = re.compile(r"\b(?:thus|therefore|hence|so|is|are|be)\b", re.IGNORECASE)


def truncated(prediction: str) -> bool:
    """Thinking that never closed: the answer was never written."""
    return "<think>" in prediction and "</think>" not in prediction


def _clean(text: str) -> str:
    return text.replace("**", "").replace("`", "").strip().strip("\"'").strip()


def _words(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped: for whole-word comparisons."""
    text = re.sub(r"[^\w%.\-]+|(?<!\d)[.\-]|[.\-](?!\d)", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def parse_choice(prediction: str, options: list[str]) -> str | None:
    """The chosen letter (A, B, ...) or None when the response does not say (see module doc)."""
    valid = LETTERS[: len(options)]
    text = _clean(strip_thinking(prediction))
    if not text or truncated(prediction):
        return None
    explicit = [m.group(1).upper() for m in _EXPLICIT.finditer(text)]
    explicit = [x for x in explicit if x in valid]
    if explicit:
        return explicit[-1]
    m = _WHOLE.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    marked = {g for m in _MARKED.finditer(text) for g in m.groups() if g and g in valid}
    if not marked:
        marked = {m.group(1) for m in _BARE.finditer(text) if m.group(1) in valid
                  and not _article(text, m)}
    if len(marked) == 1:
        return marked.pop()
    if marked:
        return None  # several letters, none stated as the answer: ambiguous
    return _option_text(text, options, valid)


def _article(text: str, m: re.Match) -> bool:
    """'A' / 'I' used as a word ("A cat", "I think"), not as a letter."""
    return m.group(1) in "AI" and re.match(r"\s+[a-z]", text[m.end():]) is not None


def _option_text(text: str, options: list[str], valid: str) -> str | None:
    said = _words(text)
    hits = [(letter, _words(o)) for letter, o in zip(valid, options) if _contains(said, _words(o))]
    # An option inside a longer matching option ("red" in "dark red") yields to it.
    hits = [(l, o) for l, o in hits if not any(o != p and _contains(p, o) for _, p in hits)]
    return hits[0][0] if len(hits) == 1 else None


def score_choice(prediction: str, options: list[str], gold: str) -> tuple[float, bool]:
    letter = parse_choice(prediction, options)
    return (float(letter == gold.strip().upper()), letter is not None)


# --- open questions ---------------------------------------------------------------------------


def gold_list(answer) -> list[str]:
    """MMMU's ``answer``: a string, or a string holding a Python list of acceptable answers."""
    if isinstance(answer, list):
        return [str(a) for a in answer]
    text = str(answer).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(value, list):
            return [str(v) for v in value]
    return [text]


def to_number(text: str) -> float | None:
    """A number written alone, with optional currency, thousands commas, unit or percent:
    "$1,200", "12 cm", "25%", "-3.5", "1/2". None for anything else ("H2O", "3 apples and 4")."""
    t = text.strip().strip(".").replace("$", "").replace("€", "").replace("£", "").strip()
    m = re.fullmatch(r"(-?(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)"
                     r"\s*(?:%|°|[a-zA-Z]{1,6}(?:\^?\d)?(?:/[a-zA-Z]{1,6}(?:\^?\d)?)?)?", t)
    return _value(m.group(1)) if m and re.search(r"\d", m.group(1)) else None


def _value(num: str) -> float | None:
    num = num.replace(",", "").replace(" ", "")
    try:
        if "/" in num:
            top, bottom = num.split("/")
            return float(top) / float(bottom) if float(bottom) else None
        return float(num)
    except ValueError:
        return None


def numbers_in(text: str) -> list[float]:
    values = [_value(m.group(0)) for m in _NUMBER.finditer(text) if re.search(r"\d", m.group(0))]
    return [v for v in values if v is not None]


def same_number(a: float, b: float) -> bool:
    return round(a, 2) == round(b, 2) or abs(a - b) <= 1e-3 * max(abs(a), abs(b))


def key_text(prediction: str) -> str:
    """The response after its last strong answer cue, else after its last weak one, else the
    whole response."""
    text = _clean(strip_thinking(prediction))
    for pattern in (_STRONG_CUES, _WEAK_CUES):
        cues = list(pattern.finditer(text))
        if cues and (tail := text[cues[-1].end():].strip(" :*")):
            return tail
    return text


def score_open(prediction: str, answer) -> tuple[float, bool]:
    if truncated(prediction) or not strip_thinking(prediction).strip():
        return 0.0, False
    key = key_text(prediction)
    candidates = numbers_in(key) or numbers_in(strip_thinking(prediction))
    said = _words(key)
    for gold in gold_list(answer):
        number = to_number(gold)
        if number is not None:
            if any(same_number(c, number) for c in candidates):
                return 1.0, True
        elif _contains(said, _words(gold)):
            return 1.0, True
    return 0.0, True
