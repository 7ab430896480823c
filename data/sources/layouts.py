"""Which published layout a JSON record is in, so that a record read with the wrong format gets
one clear reason naming the format to pick ("record 3 has 'instruction'/'output' (LLaMA-Factory
alpaca layout): set format: alpaca"), and a record in no known layout lists its keys and the
formats there are. A leaf module: it looks at a record's keys only.
"""

from __future__ import annotations

HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")

# What each JSON format reads, for the message about a record that matches nothing known.
JSON_FORMATS = ("llava_json / sharegpt ('conversations' or 'messages' of from/value or "
                "role/content turns), messages (OpenAI 'messages', content parts), alpaca "
                "('instruction' / 'input' / 'output'), swift ('messages' or 'query' / "
                "'response', 'objects'), llamafactory (a dataset_info.json), pdf ('pdf'), "
                "screenspot, coco, refcoco, hf_dataset (question / answer columns)")


def _has_parts(turns) -> bool:
    return isinstance(turns, list) and any(
        isinstance(t, dict) and isinstance(t.get("content"), list) for t in turns)


def _has_keys(turns, *keys: str) -> bool:
    return isinstance(turns, list) and any(isinstance(t, dict) and all(k in t for k in keys)
                                           for t in turns)


def layout_of(record) -> tuple[str, str] | None:
    """(what the record looks like, the format that reads it), or None if nothing known."""
    if not isinstance(record, dict):
        return None
    if record and all(isinstance(v, dict) for v in record.values()) and any(
            "file_name" in v or any(k in v for k in HUB_KEYS) for v in record.values()):
        return "the layout of LLaMA-Factory's dataset_info.json", "llamafactory"
    if "chosen" in record and "rejected" in record:
        return (("'chosen'/'rejected' (preference pairs: DPO / RLHF data, which this "
                 "fine-tuning does not train on)"), "none: leave preference data out")
    if "annotations" in record and "categories" in record:
        return "'images'/'annotations'/'categories' (COCO instances)", "coco"
    if "instruction" in record and "output" in record:
        return "'instruction'/'output' (LLaMA-Factory alpaca layout)", "alpaca"
    if "query" in record and "response" in record:
        return "'query'/'response' (ms-swift layout)", "swift"
    if "conversations" in record:
        if _has_parts(record["conversations"]):
            return "'conversations' with content parts (OpenAI layout)", "messages"
        return "'conversations' (ShareGPT / LLaVA layout)", "sharegpt"
    if "messages" in record:
        turns = record["messages"]
        if _has_keys(turns, "from", "value"):
            return "'messages' of from/value turns (ShareGPT layout)", "sharegpt"
        if _has_parts(turns):
            return "'messages' with content parts (OpenAI layout)", "messages"
        if "objects" in record:
            return "'messages' with 'objects' (ms-swift grounding layout)", "swift"
        return "'messages' of role/content turns", "messages"
    if "pdf" in record:
        return "'pdf' (a question on a PDF)", "pdf"
    if "img_filename" in record and "instruction" in record:
        return "'img_filename'/'instruction' (ScreenSpot)", "screenspot"
    if "ref_id" in record and "sentences" in record:
        return "'ref_id'/'sentences' (RefCOCO refs)", "refcoco"
    if "question" in record and ("answer" in record or "answers" in record):
        return "'question'/'answer' (a VQA table)", "hf_dataset (columns: image, question, answer)"
    return None


def wrong_layout(record, index: int, fmt: str, wants: str) -> str:
    """The reason for a record that format ``fmt`` cannot read (it wants ``wants``, e.g.
    "a 'conversations' list"): the format to pick when the record is in a known layout, else
    its keys and the formats there are."""
    found = layout_of(record)
    if found is not None and found[1] != fmt:
        return f"record {index} has {found[0]}: set format: {found[1]}"
    keys = ", ".join(repr(k) for k in list(record)[:12]) if isinstance(record, dict) else ""
    return (f"record {index} has no {wants} (format {fmt}); its keys: {keys or 'none'}. JSON "
            f"formats: {JSON_FORMATS}")
