"""MMMU answer parsing: multiple-choice letters and open (numeric / short text) answers.

Written for MMMU's reference scorer's *intent* (MMMU/eval/utils/eval_utils.py), with two
deliberate departures: nothing is guessed when a response does not parse (the reference and
lmms-eval pick a random letter; here it scores 0 and counts as unparsed), and a response that
names several letters without saying which is its answer is ambiguous, hence unparsed, rather
than credited with its first or last letter.

Multiple choice, tried in order (the first tier that decides wins):

1. a statement of the answer, "the answer is (B)", "Answer: B", "correct option: B", "B is
   correct": the *last* one wins (models restate or correct themselves: "A is wrong; the answer
   is C"), wherever other options are discussed after it ("The answer is C. Option A is wrong
   because ..." is C: naming an option is not choosing it). A statement of several letters
   ("the answer is A and C") is ambiguous (unparsed);
2. a letter that *is* the response ("B", "(B)", "**B.**");
3. letters marked as options anywhere ("B. Paris", "(B)", " B)", " B:"), or failing those bare
   capital letters (not an article "A cat" or pronoun "I think"; "A and C" are letters), less
   the letters the response rejects ("A is wrong", "not B"): exactly one distinct letter
   decides, several ("(A) or (B)", "A and C") are ambiguous (unparsed);
4. option text: exactly one option's text appears in the response as whole words and is not
   only rejected there ("It is not Paris; it is London." is London); an option contained in a
   longer matching option ("red" in "dark red") yields to it.

MMMU's reference (``parse_multi_choice_response``) takes the *last* of several letters and a
random letter when none is found; both are guesses, so both are unparsed here.

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

# Tier 1: "answer is B", "Answer: (B)", "the correct option is B", "final answer: B"; then any
# further letters joined to it ("A and C": ambiguous; case-sensitive, so "B and a reason" is B).
_LETTER = r"\(?([A-J])\)?(?![A-Za-z])"
_MORE = r"(?-i:((?:\s*(?:,|and|&|or|/)\s*\(?[A-J]\)?(?![A-Za-z]))*))"
_STATED = re.compile(r"\b(?:answer|(?:correct|right|best)\s+(?:option|choice))s?\b"
                     r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be|=))?\s*[:=]?\s*(?:\*\*)?\s*"
                     + _LETTER + _MORE, re.IGNORECASE)
# "B is correct", "(B) is the right answer": a letter affirmed after it is named.
_AFFIRMED = re.compile(r"(?<![\w(])\(?([A-J])\)?\s+(?:is|seems|appears)\s+(?:to\s+be\s+)?"
                       r"(?:the\s+)?(?:correct|right|best|true)\b")
# "A is wrong", "not B", "rule out (C)": a letter rejected.
_REJECTED = re.compile(r"(?<![\w(])\(?(?-i:([A-J]))\)?\s+(?:is|seems|appears)\s+(?:to\s+be\s+)?"
                       r"(?:not|wrong|incorrect|false|unlikely)\b"
                       r"|\b(?:not|rule\s+out|rules\s+out|eliminate|exclude|rather\s+than|instead\s+of)"
                       r"\s+(?:option\s+|choice\s+)?\(?(?-i:([A-J]))\)?(?![\w)])", re.IGNORECASE)
# Words after a capital "A" that make it a letter ("A and C", "A is wrong"), not an article.
_AFTER_LETTER = {"and", "or", "nor", "is", "was", "are", "seems", "appears", "would", "could",
                 "should", "might", "must", "can", "will", "but", "because", "since", "then"}
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
    stated = _statements(text, valid)
    if stated:
        letters = stated[-1]
        return letters[0] if len(letters) == 1 else None  # "the answer is A and C": ambiguous
    m = _WHOLE.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    rejected = {g.upper() for m in _REJECTED.finditer(text) for g in m.groups() if g}
    marked = {g for m in _MARKED.finditer(text) for g in m.groups() if g and g in valid}
    if not marked - rejected:
        marked = {m.group(1) for m in _BARE.finditer(text) if m.group(1) in valid
                  and not _article(text, m)}
    marked -= rejected
    if len(marked) == 1:
        return marked.pop()
    if marked:
        return None  # several letters, none stated as the answer: ambiguous
    return _option_text(text, options, valid)


def _statements(text: str, valid: str) -> list[list[str]]:
    """The letters of each statement of the answer, in the order they stand in the text."""
    found = []
    for m in _STATED.finditer(text):
        if m.group(1).islower() and re.match(r"\s+[a-z]", text[m.end(1):]):
            continue  # "the answer is a tricky one": an article, not option (a)
        letters = [m.group(1).upper(), *re.findall(r"[A-J]", m.group(2) or "")]
        if letters[0] in valid:
            found.append((m.start(), list(dict.fromkeys(x for x in letters if x in valid))))
    found += [(m.start(), [m.group(1)]) for m in _AFFIRMED.finditer(text) if m.group(1) in valid]
    return [letters for _, letters in sorted(found)]


def _article(text: str, m: re.Match) -> bool:
    """'A' / 'I' used as a word ("A cat", "I think"), not as a letter ("A and C", "A is wrong")."""
    after = re.match(r"\s+([a-z]+)", text[m.end():])
    return m.group(1) in "AI" and after is not None and (
        m.group(1) == "I" or after.group(1) not in _AFTER_LETTER)


def _option_text(text: str, options: list[str], valid: str) -> str | None:
    said = _words(text)
    hits = [(letter, _words(o)) for letter, o in zip(valid, options) if _affirmed(said, _words(o))]
    # An option inside a longer matching option ("red" in "dark red") yields to it.
    hits = [(l, o) for l, o in hits if not any(o != p and _contains(p, o) for _, p in hits)]
    return hits[0][0] if len(hits) == 1 else None


_NEGATIONS = ("not", "never", "t")  # "t": "isn't" -> "isn t"
_NEGATION_PAIRS = (("rather", "than"), ("instead", "of"), ("rule", "out"), ("rules", "out"))
_REJECTIONS = ("wrong", "incorrect", "false", "not", "unlikely")


def _affirmed(said: str, option: str) -> bool:
    """Whether the option's text stands in the response at least once not rejected: "not Paris",
    "rather than Paris", "Paris is wrong" reject it."""
    if not option:
        return False
    words, needle = said.split(), option.split()
    for i in range(len(words) - len(needle) + 1):
        if words[i:i + len(needle)] != needle:
            continue
        before, after = words[max(0, i - 2):i], words[i + len(needle):i + len(needle) + 3]
        negated = (before[-1:] and before[-1] in _NEGATIONS) or tuple(before) in _NEGATION_PAIRS
        after = [w for w in after if w not in ("is", "seems", "appears", "to", "be")][:1]
        if not negated and not (after and after[0] in _REJECTIONS):
            return True
    return False


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
