"""Reward functions for RL with verifiable rewards, which ARE the eval harness's scoring rules:
one scoring code path for eval and RL, so a reward gained in training is a score gained on the
leaderboard.

A reward function is ``fn(completion: str, sample: Sample) -> float``; ``sample`` is the prompt's
sample (its reference answer and ``meta`` as the data source or eval loader wrote them).
``resolve(name)`` gives one by name:

- ``task:<eval task>`` (``eval.tasks.TASKS``, e.g. ``task:synthetic_grounding``,
  ``task:mathvista_testmini``, ``task:mmmu_val``, ``task:docvqa_val``, ``task:refcoco_val``):
  the score ``eval.runner.score_record`` gives the reply, thinking handled as eval handles it
  (a ``<think>`` block that never closed scores 0; a closed one is stripped before scoring);
- aliases: ``mathvista``, ``mmmu``, ``docvqa_anls``, ``refcoco_acc50``, ``synthetic_grounding``
  (those tasks), ``anls`` / ``exact_match`` (``eval.metrics`` against ``meta["answers"]`` or
  the sample's answer), ``grounding_iou`` (the IoU of the first predicted box, parsed and
  scale-checked as the grounding tasks do, ``data/boxes.py``: a continuous version of their
  Acc@0.5), ``json_format`` (1 when the answer is one JSON value, nothing after it),
  ``think_format`` (1 when the reply is ``<think>...</think>`` then a non-empty
  answer, as the Thinking models write);
- ``module:function``: a user function imported by path.

``RewardSet`` combines weighted functions. A function that raises or returns no finite number
fails that completion for that reward: its part is 0 and the error is recorded in the outcome;
it never raises out of ``score``.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from data.boxes import answer_json, box_from_relative, iou, on_scale, parse_boxes
from eval.metrics import anls, exact_match, strip_thinking, thinking_truncated

RewardFn = Callable[[str, object], float]
TASK_ALIASES = {"mathvista": "mathvista_testmini", "mmmu": "mmmu_val", "docvqa_anls": "docvqa_val",
                "refcoco_acc50": "refcoco_val", "synthetic_grounding": "synthetic_grounding"}


def task_reward(task_name: str, opens_thinking: bool = False) -> RewardFn:
    """The eval task's score of a reply, through the eval runner's own ``score_record``.
    ``opens_thinking``: the chat template starts replies inside ``<think>`` (Thinking
    checkpoints), so a reply without ``</think>`` never answered."""
    from eval.runner import score_record
    from eval.tasks import get_task

    task = get_task(task_name)

    def reward(completion: str, sample) -> float:
        record = {"id": sample.id, "prediction": completion}
        if thinking_truncated(completion, opens_thinking):
            record["thinking_truncated"] = True
        return float(score_record(task, sample, record, None)["score"])

    reward.__name__ = f"task:{task_name}"
    return reward


def _golds(sample) -> list[str]:
    answers = sample.meta.get("answers")
    return [str(a) for a in answers] if isinstance(answers, list) and answers else [sample.answer()]


def _answer(completion: str, opens_thinking: bool) -> str | None:
    """The reply without its thinking; None when thinking never closed (no answer given)."""
    if thinking_truncated(completion, opens_thinking):
        return None
    return strip_thinking(completion)


def anls_reward(opens_thinking: bool = False) -> RewardFn:
    def reward(completion: str, sample) -> float:
        answer = _answer(completion, opens_thinking)
        return 0.0 if answer is None else anls(answer, _golds(sample))
    return reward


def exact_match_reward(opens_thinking: bool = False) -> RewardFn:
    def reward(completion: str, sample) -> float:
        answer = _answer(completion, opens_thinking)
        return 0.0 if answer is None else exact_match(answer, _golds(sample))
    return reward


def grounding_iou_reward(opens_thinking: bool = False) -> RewardFn:
    """IoU of the first predicted box with the reference: pixel boxes in ``meta["boxes"]`` with
    ``meta["image_size"]`` (the refcoco / screenspot readers), else the box of the sample's own
    answer on Qwen's relative [0, 1000) scale (bbox_2d JSON, the synthetic and coco readers)."""
    def reward(completion: str, sample) -> float:
        answer = _answer(completion, opens_thinking)
        boxes = parse_boxes(answer) if answer is not None else []
        if not boxes or not on_scale(boxes[0]):
            return 0.0
        if sample.meta.get("boxes") and sample.meta.get("image_size"):
            width, height = sample.meta["image_size"]
            return iou(box_from_relative(boxes[0], width, height), sample.meta["boxes"][0])
        gold = parse_boxes(sample.answer())
        if not gold:
            raise ValueError(f"sample {sample.id}: no reference box (no meta boxes and no "
                             f"bbox_2d in its answer)")
        return iou(boxes[0], gold[0])
    return reward


def json_format_reward(opens_thinking: bool = False) -> RewardFn:
    """1 when the answer (thinking stripped) is one JSON value, as Qwen3-VL's grounding replies
    are (an optional ```json fence allowed); 0 for text around or after it. The grounding
    scorers read the first box out of any text, so without this a policy may learn to trail
    garbage after its box."""
    def reward(completion: str, sample) -> float:
        answer = _answer(completion, opens_thinking)
        return 0.0 if answer is None else float(answer_json(answer)[0] is not None)
    return reward


THINK_FORMAT = re.compile(r"^\s*(<think>)?(?P<thought>(?:(?!</?think>).)*)</think>"
                          r"(?P<answer>(?:(?!</?think>).)*)$", re.DOTALL)


def think_format_reward(opens_thinking: bool = False) -> RewardFn:
    """1 for ``<think>reasoning</think>answer`` (one block, non-empty answer); the opening tag
    may be absent only when the template already wrote it (``opens_thinking``)."""
    def reward(completion: str, sample) -> float:
        m = THINK_FORMAT.match(completion)
        if not m or (m.group(1) is None and not opens_thinking):
            return 0.0
        return float(bool(m.group("answer").strip()))
    return reward


BUILTIN = {"anls": anls_reward, "exact_match": exact_match_reward,
           "grounding_iou": grounding_iou_reward, "json_format": json_format_reward,
           "think_format": think_format_reward}


def resolve(name: str, opens_thinking: bool = False) -> RewardFn:
    """The reward function ``name`` means (see the module doc); ValueError naming the choices."""
    if name.startswith("task:"):
        return task_reward(name[5:], opens_thinking)
    if name in TASK_ALIASES:
        return task_reward(TASK_ALIASES[name], opens_thinking)
    if name in BUILTIN:
        return BUILTIN[name](opens_thinking)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward {name!r}: cannot import it ({type(e).__name__}: {e})") from None
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    raise ValueError(f"unknown reward {name!r}; choose from {sorted(BUILTIN)}, "
                     f"{sorted(TASK_ALIASES)}, task:<eval task> or module:function")


@dataclass
class RewardOutcome:
    """One completion's reward: the weighted ``total``, each reward's ``parts`` and the
    ``errors`` of rewards that failed on it (their part is 0)."""

    total: float
    parts: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)


class RewardSet:
    """Weighted reward functions: ``{name: weight}`` (names as ``resolve`` takes them)."""

    def __init__(self, weights: dict[str, float], opens_thinking: bool = False):
        if not weights:
            raise ValueError("no reward functions named")
        self.weights = dict(weights)
        self.functions = {name: resolve(name, opens_thinking) for name in weights}

    def score(self, completion: str, sample) -> RewardOutcome:
        parts, errors = {}, {}
        for name, fn in self.functions.items():
            try:
                value = float(fn(completion, sample))
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
            except Exception as e:  # noqa: BLE001 - a failed reward fails this completion only
                parts[name], errors[name] = 0.0, f"{type(e).__name__}: {e}"
                continue
            parts[name] = value
        total = sum(self.weights[n] * v for n, v in parts.items())
        return RewardOutcome(total, parts, errors)
