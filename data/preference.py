"""Preference pairs (DPO): one prompt with a chosen and a rejected reply, planned and encoded with
the SFT machinery so budgets, templates and labels mean exactly what they mean for SFT.

A ``PreferencePair`` holds the prompt turns (system / user / earlier assistant turns, content
parts as in ``Sample``), the two replies (one assistant message each) and the media the prompt
places. ``chosen_sample()`` / ``rejected_sample()`` are the two full conversations as ``Sample``s
sharing the same media lists, so the planner and the encoder need nothing new.

- Planning (``plan_pairs``): both sides counted by ``TokenPlanner``; a pair is over budget when
  either side is. With ``over_budget: shrink`` the longer side's largest fitting vision budget is
  given to the pair (the media are shared, so the shorter side then fits too).
- Encoding (``PairEncoder.encode``): each side through ``SampleEncoder.encode``; labels are kept
  on the reply only (an earlier assistant turn of a multi-turn prompt is context, not a target).
  One example with ``chosen_*`` / ``rejected_*`` keys.
- Batching (``collate_pairs``): B pairs -> one padded batch of 2B rows, the B chosen rows first,
  then the B rejected rows in the same order; visual tensors concatenated in row order.
  Packing (``collate_packed_pairs``): the 2B sequences in one packed row (pair by pair, each
  with its positions restarted, ``data/packing.py``), with ``sequence_ids`` naming each token's
  sequence in the padded order, so per-sequence sums come out in the same (chosen, rejected)
  order; ``sequence_ids`` is not a model input (``train.objectives.dpo.model_inputs`` drops it).

The visual encoding is NOT shared between the two sides: each side's images are processed and
sent through the vision tower on their own (twice the vision work of one sample). This keeps a
row an ordinary SFT row (packing, sequence parallelism, ZeRO-3 gathering unchanged); sharing
would need the vision features cached across rows of one forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from data.corpus import _over_budget, _shrink, plan_each
from data.encode import IGNORE_INDEX, REPAIRS, SampleEncoder, collate
from data.packing import collate_packed
from data.planner import TokenPlanner
from data.samples import BadSampleLog, Sample

SIDES = ("chosen", "rejected")
SEQUENCE_IDS = "sequence_ids"  # packed pair rows: each token's sequence (not a model input)


@dataclass
class PreferencePair:
    """A prompt and two replies to it. ``prompt``: messages ending with a user turn; ``chosen`` /
    ``rejected``: one assistant message each (``{"role": "assistant", "content": [parts]}``,
    optionally ``reasoning_content``). ``images`` / ``videos``: what the prompt's image / video
    parts take, in order (as ``Sample``)."""

    id: str
    prompt: list[dict]
    chosen: dict
    rejected: dict
    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    source: str = ""
    index: int = -1
    meta: dict = field(default_factory=dict)
    vision_budget: object | None = None  # set by planning when the pair was shrunk to fit

    def side(self, which: str) -> Sample:
        """One side's full conversation as a ``Sample`` (the media lists are shared, not copied)."""
        if which not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {which!r}")
        reply = self.chosen if which == "chosen" else self.rejected
        return Sample(id=self.id, messages=self.prompt + [reply], images=self.images,
                      source=self.source, index=self.index, meta=self.meta, videos=self.videos,
                      vision_budget=self.vision_budget)

    def chosen_sample(self) -> Sample:
        return self.side("chosen")

    def rejected_sample(self) -> Sample:
        return self.side("rejected")

    def prompt_sample(self) -> Sample:
        """The prompt with the chosen reply as its reference answer (generation, rewards)."""
        return self.chosen_sample()


def reply_text(message: dict) -> str:
    """The text of a reply message (its reasoning included), for comparing two replies."""
    text = "".join(p.get("text", "") for p in message["content"] if isinstance(p, dict))
    return (message.get("reasoning_content") or "") + "\x00" + text


def pair_from_samples(chosen: Sample, rejected: Sample) -> PreferencePair:
    """The pair two converted full conversations make; ValueError when they are not one prompt
    with two different replies (different prompts or media, a last turn that is no reply, the
    same reply twice)."""
    for name, s in (("chosen", chosen), ("rejected", rejected)):
        if s.messages[-1]["role"] != "assistant":
            raise ValueError(f"the {name} conversation does not end with an assistant reply")
        if not s.messages[:-1] or s.messages[-2]["role"] != "user":
            raise ValueError(f"the {name} reply does not answer a user turn (the prompt must end "
                             f"with a user turn)")
        if not s.messages[-1]["content"]:
            raise ValueError(f"the {name} reply is empty")
    if chosen.messages[:-1] != rejected.messages[:-1]:
        raise ValueError("the chosen and rejected conversations have different prompts")
    if list(map(str, chosen.images)) != list(map(str, rejected.images)) or \
            list(map(str, chosen.videos)) != list(map(str, rejected.videos)):
        raise ValueError("the chosen and rejected sides name different images / videos; a "
                         "pair shares one prompt and its media")
    if reply_text(chosen.messages[-1]) == reply_text(rejected.messages[-1]):
        raise ValueError("chosen and rejected replies are the same (nothing to prefer)")
    return PreferencePair(id=chosen.id, prompt=chosen.messages[:-1], chosen=chosen.messages[-1],
                          rejected=rejected.messages[-1], images=chosen.images,
                          videos=chosen.videos, source=chosen.source, index=chosen.index,
                          meta=chosen.meta)


# --- Planning --------------------------------------------------------------------------------

def plan_pairs(pairs: list[PreferencePair], planner: TokenPlanner, cfg, bad: BadSampleLog,
               ) -> tuple[list[PreferencePair], list[tuple[int, int]]]:
    """(kept pairs, (chosen tokens, rejected tokens) of each). ``cfg``: the ``DataConfig``
    (``max_seq_len``, ``max_visual_tokens``, ``over_budget``). Pairs that cannot be planned or
    are over budget on either side (after shrinking, under ``shrink``) go to ``bad``."""
    def plan_one(pair):
        plans = [planner.plan(pair.side(s)) for s in SIDES]
        longer = max(range(2), key=lambda k: plans[k].total)
        problem = _over_budget(plans[longer], cfg)
        if problem and cfg.over_budget == "shrink":
            shrunk = _shrink(pair.side(SIDES[longer]), planner, cfg)
            if shrunk is not None:
                pair.vision_budget = shrunk[0]
                plans = [planner.plan(pair.side(s)) for s in SIDES]
                problem = next(filter(None, (_over_budget(p, cfg) for p in plans)), None)
            else:
                problem += " (still over at the smallest vision budget)"
        return (plans[0].total, plans[1].total), problem and f"{SIDES[longer]} side: {problem}"

    return plan_each(pairs, plan_one, bad)


# --- Encoding --------------------------------------------------------------------------------

def keep_last_replies(labels: torch.Tensor, n: int = 1) -> torch.Tensor:
    """``labels`` with only the last ``n`` labelled runs kept (a run: one assistant turn and its
    ``<|im_end|>``, as ``SampleEncoder.assistant_labels`` writes them)."""
    labelled = (labels != IGNORE_INDEX).tolist()
    starts = [i for i, on in enumerate(labelled) if on and (i == 0 or not labelled[i - 1])]
    if len(starts) <= n:
        return labels
    out = labels.clone()
    out[:starts[-n]] = IGNORE_INDEX
    return out


class PairEncoder:
    """Encodes pairs with one source's ``SampleEncoder`` (its processor, budget, max_seq_len)."""

    def __init__(self, encoder: SampleEncoder):
        self.encoder = encoder

    def encode_side(self, pair: PreferencePair, which: str) -> dict:
        example = self.encoder.encode(pair.side(which))
        example["labels"] = keep_last_replies(example["labels"])
        return example

    def encode(self, pair: PreferencePair) -> dict:
        """One example: each key of an encoded sample twice, as ``chosen_<key>`` and
        ``rejected_<key>``; ``repairs`` (video frames filled) of both sides, when any."""
        example, repairs = {}, []
        for which in SIDES:
            side = self.encode_side(pair, which)
            repairs += [f"{which}: {r}" for r in side.pop(REPAIRS, [])]
            example.update({f"{which}_{k}": v for k, v in side.items()})
        if repairs:
            example[REPAIRS] = repairs
        return example


def split_sides(example: dict) -> tuple[dict, dict]:
    """(chosen example, rejected example) of an encoded pair, with the plain sample keys."""
    sides = []
    for which in SIDES:
        prefix = f"{which}_"
        sides.append({k[len(prefix):]: v for k, v in example.items() if k.startswith(prefix)})
    return sides[0], sides[1]


def collate_pairs(examples: list[dict], pad_token_id: int) -> dict:
    """B encoded pairs -> one right-padded batch of 2B rows: rows 0..B-1 the chosen sides, rows
    B..2B-1 the rejected sides (pair i in rows i and B + i); pixel values and grids concatenated
    in row order (``data.encode.collate``)."""
    sides = [split_sides(e) for e in examples]
    return collate([c for c, _ in sides] + [r for _, r in sides], pad_token_id)


def collate_packed_pairs(examples: list[dict], merge_size: int) -> dict:
    """B encoded pairs -> one packed row (``data.packing.collate_packed``): chosen 0, rejected 0,
    chosen 1, ... each attending only to itself with its own positions; ``sequence_ids``
    ``(1, L)``: i for chosen i's tokens, B + i for rejected i's (the rows of ``collate_pairs``)."""
    sides = [split_sides(e) for e in examples]
    batch = collate_packed([s for pair in sides for s in pair], merge_size)
    b, ids = len(examples), []
    for i, pair in enumerate(sides):
        for k, side in enumerate(pair):
            ids.append(torch.full((len(side["input_ids"]),), i + k * b, dtype=torch.long))
    batch[SEQUENCE_IDS] = torch.cat(ids)[None]
    return batch
