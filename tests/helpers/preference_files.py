"""Preference corpora written in the layouts other projects publish, each holding the same two
pairs (an image question, then a text-only two-turn chat), so every reader must give the same
``PreferencePair``s. Layouts as documented by:

- LLaMA-Factory data/README.md ("preference dataset", sharegpt): ``conversations`` +
  ``chosen`` / ``rejected`` turn objects, ``images``; dataset_info entry with ``"ranking":
  true`` and ``columns`` ``messages`` / ``chosen`` / ``rejected`` / ``images``; its alpaca form
  (``instruction`` / ``input`` + ``chosen`` / ``rejected`` strings);
- ms-swift Custom-dataset.md (RLHF): ``messages`` ending with the chosen reply +
  ``rejected_response``, ``images``; ms-swift >= 3.8 ``rejected_messages`` + ``rejected_images``;
- TRL dataset_formats (preference, conversational, vision as in trl-lib/rlaif-v): ``prompt``
  message list with bare ``{"type": "image"}`` parts + ``chosen`` / ``rejected`` message lists
  + ``images``; standard (plain text) ``prompt`` / ``chosen`` / ``rejected`` strings; implicit
  prompt (no ``prompt``);
- ours: ``messages`` (the prompt) + ``chosen`` / ``rejected`` strings, ``images``.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.helpers.files import write_json, write_jsonl

QUESTION = "What colour is the square?"
CHOSEN, REJECTED = "Red.", "Blue."
TURN1_Q, TURN1_A, TURN2_Q = "Say hi.", "Hi!", "Now say bye."
BYE_CHOSEN, BYE_REJECTED = "Bye!", "No."


def image(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), "red").save(folder / "red.png")
    return "red.png"


def llamafactory_sharegpt(folder: Path) -> Path:
    img = image(folder)
    records = [
        {"conversations": [{"from": "human", "value": f"<image>{QUESTION}"}],
         "chosen": {"from": "gpt", "value": CHOSEN},
         "rejected": {"from": "gpt", "value": REJECTED}, "images": [img]},
        {"conversations": [{"from": "human", "value": TURN1_Q}, {"from": "gpt", "value": TURN1_A},
                           {"from": "human", "value": TURN2_Q}],
         "chosen": {"from": "gpt", "value": BYE_CHOSEN},
         "rejected": {"from": "gpt", "value": BYE_REJECTED}},
    ]
    write_json(folder / "dpo_en_demo.json", records)
    info = {"dpo_demo": {"file_name": "dpo_en_demo.json", "formatting": "sharegpt", "ranking": True,
                         "columns": {"messages": "conversations", "chosen": "chosen",
                                     "rejected": "rejected", "images": "images"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder / "dpo_en_demo.json"


def llamafactory_alpaca(folder: Path) -> Path:
    img = image(folder)
    records = [{"instruction": f"<image>{QUESTION}", "input": "", "chosen": CHOSEN,
                "rejected": REJECTED, "images": [img]}]
    write_json(folder / "dpo_alpaca.json", records)
    info = {"dpo_alpaca": {"file_name": "dpo_alpaca.json", "ranking": True,
                           "columns": {"prompt": "instruction", "query": "input",
                                       "chosen": "chosen", "rejected": "rejected",
                                       "images": "images"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder / "dataset_info.json"


def swift_rlhf(folder: Path) -> Path:
    img = image(folder)
    records = [
        {"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                      {"role": "assistant", "content": CHOSEN}],
         "rejected_response": REJECTED, "images": [img]},
        {"messages": [{"role": "user", "content": TURN1_Q}, {"role": "assistant", "content": TURN1_A},
                      {"role": "user", "content": TURN2_Q},
                      {"role": "assistant", "content": BYE_CHOSEN}],
         "rejected_messages": [{"role": "user", "content": TURN1_Q},
                               {"role": "assistant", "content": TURN1_A},
                               {"role": "user", "content": TURN2_Q},
                               {"role": "assistant", "content": BYE_REJECTED}]},
    ]
    return write_jsonl(folder / "swift_dpo.jsonl", records)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def trl_conversational(folder: Path) -> Path:
    img = image(folder)
    records = [
        {"prompt": [{"role": "user", "content": [{"type": "image"},
                                                  {"type": "text", "text": QUESTION}]}],
         "chosen": _assistant(CHOSEN), "rejected": _assistant(REJECTED), "images": [img]},
        # implicit prompt: chosen and rejected are whole conversations
        {"chosen": [{"role": "user", "content": TURN1_Q}, {"role": "assistant", "content": TURN1_A},
                    {"role": "user", "content": TURN2_Q}, {"role": "assistant", "content": BYE_CHOSEN}],
         "rejected": [{"role": "user", "content": TURN1_Q},
                      {"role": "assistant", "content": TURN1_A},
                      {"role": "user", "content": TURN2_Q},
                      {"role": "assistant", "content": BYE_REJECTED}]},
    ]
    return write_jsonl(folder / "trl_pref.jsonl", records)


def trl_standard(folder: Path) -> Path:
    img = image(folder)
    return write_jsonl(folder / "trl_plain.jsonl", [
        {"prompt": QUESTION, "chosen": CHOSEN, "rejected": REJECTED, "images": [img]}])


def ours(folder: Path) -> Path:
    img = image(folder)
    return write_jsonl(folder / "pairs.jsonl", [
        {"id": "p0", "messages": [{"role": "user", "content": f"<image>{QUESTION}"}],
         "chosen": CHOSEN, "rejected": REJECTED, "images": [img]},
        {"id": "p1", "messages": [{"role": "user", "content": TURN1_Q},
                                  {"role": "assistant", "content": TURN1_A},
                                  {"role": "user", "content": TURN2_Q}],
         "chosen": {"role": "assistant", "content": BYE_CHOSEN}, "rejected": BYE_REJECTED},
    ])
