"""Small corpora in the PUBLISHED layouts of the projects users bring data from, each with the
outcome reading it must give: LLaMA-Factory (``dataset_info.json`` entries, sharegpt with
role/content and from/value tags, alpaca, the mllm image / video / audio demos, tool calls),
ms-swift (messages rows, query/response rows, grounding ``objects``), Qwen's finetune demo and
LLaVA (``llava_json``), OpenAI chat completions and qwen-vl-utils messages, and Hugging Face
parquet files (image structs and raw image bytes).

``write_format_fixtures(out_dir)`` writes them (texts and pictures are our own; the record
layouts, keys and tags are the projects') and returns one ``FormatFixture`` per layout: the
sources to read it with and, per sample id, what must come out (media counts, the system
turn, the answer, where the media sit in the first user turn) or the reason it must be
reported. ``check_fixture(fixture)`` reads every source and lists what differs (empty: ok);
``scripts/bench_data.py`` prints the count as ``real_format_fixtures_ok``.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from data.config import SourceConfig
from data.media import images as images_lib
from data.samples import BadSampleLog, DataError
from data.sources import load
from data.tools.synthetic import write_grey_video

LEFTOVER_TAGS = ("<image>", "<video>", "<audio>", "<ref-object>", "<bbox>")


@dataclass
class Expect:
    """What one sample must be."""

    answer: str  # the last assistant turn's text (Sample.answer())
    images: int = 0
    videos: int = 0
    system: str | None = None  # the system turn's text; None: no system turn
    n_messages: int | None = None  # turns, system included; None: not checked
    first_user: list[str] | None = None  # part types of the first user turn, e.g. [image, text]


@dataclass
class FormatFixture:
    """One published layout: where it comes from, the sources that read it, and the outcome
    each must give (every source of a fixture yields the same samples)."""

    project: str  # e.g. "LLaMA-Factory"
    layout: str  # e.g. "sharegpt (role/content) + images: data/mllm_demo.json"
    sources: list[SourceConfig]
    expected: dict[str, Expect]  # sample id -> outcome
    bad: dict[str, str] = field(default_factory=dict)  # sample id -> text of the reason

    @property
    def name(self) -> str:
        return f"{self.project}: {self.layout}"


# --- Check -----------------------------------------------------------------------------------

def _text(message: dict) -> str:
    return "".join(p.get("text", "") for p in message["content"])


def _sample_problems(sample, want: Expect) -> list[str]:
    got_system = next((_text(m) for m in sample.messages if m["role"] == "system"), None)
    users = [m for m in sample.messages if m["role"] == "user"]
    parts = [p for m in sample.messages for p in m["content"]]
    checks = [
        ("images", len(sample.images), want.images),
        ("videos", len(sample.videos), want.videos),
        ("image parts", sum(p["type"] == "image" for p in parts), len(sample.images)),
        ("video parts", sum(p["type"] == "video" for p in parts), len(sample.videos)),
        ("system", got_system, want.system),
        ("answer", sample.answer(), want.answer),
    ]
    if want.n_messages is not None:
        checks.append(("messages", len(sample.messages), want.n_messages))
    if want.first_user is not None:
        checks.append(("first user parts", [p["type"] for p in users[0]["content"]] if users
                       else None, want.first_user))
    problems = [f"{what} {got!r}, expected {expected!r}" for what, got, expected in checks
                if got != expected]
    leftover = sorted({tag for p in parts for tag in LEFTOVER_TAGS if tag in p.get("text", "")})
    if leftover:
        problems.append(f"text still holds {', '.join(leftover)}")
    problems += [f"image {ref[:60]}: {why}" for ref in sample.images
                 if (why := images_lib.check(ref))]
    return problems


def check_fixture(fixture: FormatFixture) -> list[str]:
    """Read every source of ``fixture`` and list how the outcome differs from the expected one
    (empty: as expected)."""
    problems = []
    for source in fixture.sources:
        label = f"{source.format} {Path(source.path).name}"
        log = BadSampleLog("skip")
        try:
            samples = load(source, log)
        except DataError as e:
            problems.append(f"{label}: {e}")
            continue
        by_id = {s.id: s for s in samples}
        reasons = {r.sample_id: r.reason for r in log.records}
        for sid in sorted(set(by_id) - set(fixture.expected)):
            problems.append(f"{label}: unexpected sample {sid}")
        for sid in sorted(set(reasons) - set(fixture.bad)):
            problems.append(f"{label}: sample {sid} reported: {reasons[sid]}")
        for sid, want in fixture.expected.items():
            if sid in by_id:
                problems += [f"{label}: sample {sid}: {p}" for p in _sample_problems(by_id[sid], want)]
            elif sid not in reasons:
                problems.append(f"{label}: sample {sid} missing")
        for sid, needle in fixture.bad.items():
            if sid not in reasons:
                problems.append(f"{label}: sample {sid} not reported (expected: {needle})")
            elif needle not in reasons[sid]:
                problems.append(f"{label}: sample {sid}: reason {reasons[sid]!r} lacks {needle!r}")
    return problems


# --- Files -----------------------------------------------------------------------------------

def _image(path: Path, size=(64, 48), color=(200, 40, 40)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.name


def _data_uri(size=(40, 30), subtype: str | None = "png") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 160, 90)).save(buf, format="PNG")
    head = f"data:image/{subtype}" if subtype else "data:image"
    return f"{head};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _video(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_grey_video(path, 8)


def _json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _src(path: Path, fmt: str, **kw) -> SourceConfig:
    return SourceConfig(path=str(path), format=fmt, **kw)


def _chat(*pairs: str, system: str | None = None, role="role", content="content",
          user="user", assistant="assistant") -> list[dict]:
    turns = [{role: "system", content: system}] if system else []
    for i, text in enumerate(pairs):
        turns.append({role: user if i % 2 == 0 else assistant, content: text})
    return turns


# --- LLaMA-Factory -----------------------------------------------------------------------------

LF_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
           "assistant_tag": "assistant"}


def _llamafactory(root: Path) -> list[FormatFixture]:
    """LLaMA-Factory's data/ folder: dataset_info.json beside the files, media in
    mllm_demo_data/ (its media_dir defaults to the dataset folder)."""
    d = root / "llamafactory" / "data"
    media = d / "mllm_demo_data"
    for k in (1, 2, 3):
        _image(media / f"{k}.jpg", (96 + 16 * k, 64), (40 * k, 90, 200))
    _video(media / "1.mp4")
    (media / "1.mp3").write_bytes(b"ID3")  # never opened: audio is refused first
    _json(d / "mllm_demo.json", [
        {"messages": _chat("<image>Who is in the picture?", "Two players of the home team.",
                           "What are they doing?<image>", "Celebrating a goal."),
         "images": ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]},
        {"messages": _chat("<image>Why is he on the ground?", "He slid on his knees to celebrate."),
         "images": ["mllm_demo_data/2.jpg"]},
        {"messages": _chat("Please describe this image", "A speaker at a podium."),
         "images": ["mllm_demo_data/3.jpg"]},  # no tag: the image goes first (LLaVA rule)
    ])
    _json(d / "mllm_video_demo.json", [
        {"messages": _chat("<video>Why is this video funny?", "Because the grey keeps changing."),
         "videos": ["mllm_demo_data/1.mp4"]}])
    _json(d / "mllm_audio_demo.json", [
        {"messages": _chat("<audio>What's that sound?", "Glass breaking."),
         "audios": ["mllm_demo_data/1.mp3"]}])
    _json(d / "alpaca_en_demo.json", [
        {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow, blue."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}])
    _json(d / "alpaca_mm.json", [
        {"instruction": "<image>What colour is the square?", "input": "", "output": "Blue.",
         "system": "Answer in one word.", "history": [["Hi", "Hello!"]],
         "images": ["mllm_demo_data/1.jpg"]},
        {"instruction": "Compare them.", "input": "<image> and <image>", "output": "Same size.",
         "images": ["mllm_demo_data/1.jpg", "mllm_demo_data/2.jpg"]}])
    _json(d / "sharegpt_demo.json", [
        {"conversations": [{"from": "human", "value": "Tell me a joke."},
                           {"from": "gpt", "value": "Why did the chicken cross the road?"},
                           {"from": "human", "value": "Why?"},
                           {"from": "gpt", "value": "To get to the other side."}],
         "system": "You are a comedian."},
        {"conversations": [{"from": "human", "value": "What is 2 + 2?"},
                           {"from": "gpt", "value": "4"}]}])
    _json(d / "glaive_toolcall_en_demo.json", [
        {"conversations": [{"from": "human", "value": "What's the weather in Paris?"},
                           {"from": "function_call",
                            "value": "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}"},
                           {"from": "observation", "value": "{\"temp\": 21}"},
                           {"from": "gpt", "value": "It is 21 degrees in Paris."}],
         "tools": "[{\"name\": \"weather\", \"parameters\": {\"city\": \"string\"}}]"}])
    info = _json(d / "dataset_info.json", {
        "identity_hub": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "alpaca_mm": {"file_name": "alpaca_mm.json",
                      "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                  "system": "system", "history": "history", "images": "images"}},
        "sharegpt_demo": {"file_name": "sharegpt_demo.json", "formatting": "sharegpt",
                          "columns": {"messages": "conversations", "system": "system"}},
        "glaive_toolcall_en_demo": {"file_name": "glaive_toolcall_en_demo.json",
                                    "formatting": "sharegpt",
                                    "columns": {"messages": "conversations", "tools": "tools"}},
        "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"}, "tags": LF_TAGS},
        "mllm_video_demo": {"file_name": "mllm_video_demo.json", "formatting": "sharegpt",
                            "columns": {"messages": "messages", "videos": "videos"}, "tags": LF_TAGS},
        "mllm_audio_demo": {"file_name": "mllm_audio_demo.json", "formatting": "sharegpt",
                            "columns": {"messages": "messages", "audios": "audios"}, "tags": LF_TAGS},
        "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "chosen": "chosen",
                                    "rejected": "rejected"}},
    })

    def lf(name: str) -> SourceConfig:
        return SourceConfig(path=str(info), format="llamafactory", subset=name)

    return [
        FormatFixture("LLaMA-Factory", "sharegpt (role/content tags) + images: mllm_demo",
                      [lf("mllm_demo"), _src(d / "mllm_demo.json", "sharegpt"),
                       _src(d / "mllm_demo.json", "messages")],
                      {"0": Expect("Celebrating a goal.", images=2, n_messages=4,
                                   first_user=["image", "text"]),
                       "1": Expect("He slid on his knees to celebrate.", images=1),
                       "2": Expect("A speaker at a podium.", images=1,
                                   first_user=["image", "text"])}),
        FormatFixture("LLaMA-Factory", "sharegpt (role/content tags) + videos: mllm_video_demo",
                      [lf("mllm_video_demo"), _src(d / "mllm_video_demo.json", "messages")],
                      {"0": Expect("Because the grey keeps changing.", videos=1,
                                   first_user=["video", "text"])}),
        FormatFixture("LLaMA-Factory", "sharegpt + audios: mllm_audio_demo (reported)",
                      [lf("mllm_audio_demo"), _src(d / "mllm_audio_demo.json", "sharegpt")],
                      {}, {"0": "audio is not supported by Qwen3-VL"}),
        FormatFixture("LLaMA-Factory", "alpaca: alpaca_en_demo",
                      [lf("alpaca_en_demo"), _src(d / "alpaca_en_demo.json", "alpaca")],
                      {"0": Expect("Red, yellow, blue.", n_messages=2),
                       "1": Expect("Bonjour", n_messages=2)}),
        FormatFixture("LLaMA-Factory", "alpaca + system, history, images (columns)",
                      [lf("alpaca_mm"), _src(d / "alpaca_mm.json", "alpaca")],
                      {"0": Expect("Blue.", images=1, system="Answer in one word.", n_messages=5,
                                   first_user=["text"]),
                       "1": Expect("Same size.", images=2,
                                   first_user=["text", "image", "text", "image"])}),
        FormatFixture("LLaMA-Factory", "sharegpt (from/value) + system column",
                      [lf("sharegpt_demo"), _src(d / "sharegpt_demo.json", "sharegpt"),
                       _src(d / "sharegpt_demo.json", "llava_json")],
                      {"0": Expect("To get to the other side.", system="You are a comedian.",
                                   n_messages=5),
                       "1": Expect("4", n_messages=2)}),
        FormatFixture("LLaMA-Factory", "sharegpt function_call / observation turns: "
                                       "glaive_toolcall_en_demo (reported)",
                      [lf("glaive_toolcall_en_demo"),
                       _src(d / "glaive_toolcall_en_demo.json", "sharegpt")],
                      {}, {"0": "not supported"}),
    ]


# --- ms-swift ------------------------------------------------------------------------------------

def _swift(root: Path) -> list[FormatFixture]:
    d = root / "swift"
    a = _image(d / "imgs" / "a.png", (200, 100))
    b = _image(d / "imgs" / "b.png", (50, 80), (10, 10, 10))
    _video(d / "clips" / "c.mp4")
    rows = [
        {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "<image>What is in the image?"},
                      {"role": "assistant", "content": "A red rectangle."}],
         "images": [f"imgs/{a}"]},
        {"messages": [{"role": "user", "content": "<image><image>What is the difference?"},
                      {"role": "assistant", "content": "The second is darker."}],
         "images": [f"imgs/{a}", f"imgs/{b}"]},
        {"messages": [{"role": "user", "content": "<video>Describe this video"},
                      {"role": "assistant", "content": "A flat grey that brightens."}],
         "videos": ["clips/c.mp4"]},
        {"messages": [{"role": "user", "content": "Just text."},
                      {"role": "assistant", "content": "Fine."}]},
    ]
    messages = _jsonl(d / "messages.jsonl", rows)
    qr = _jsonl(d / "query_response.jsonl", [
        {"system": "Be brief.", "query": "<image>Colour?", "response": "Red.",
         "history": [["Hello", "Hi there."]], "images": [f"imgs/{a}"]},
        {"query": "Capital of France?", "response": "Paris."}])
    grounding = _jsonl(d / "grounding.jsonl", [
        {"messages": [{"role": "user", "content": "<image>Find the <ref-object> in the image"},
                      {"role": "assistant", "content": "<bbox>"}],
         "images": [f"imgs/{a}"],
         "objects": {"ref": ["box"], "bbox": [[20, 10, 100, 50]], "bbox_type": "real",
                     "image_id": [0]}},
        {"messages": [{"role": "user", "content": "<image>Describe the image."},
                      {"role": "assistant", "content": "<ref-object><bbox> and <ref-object><bbox>"}],
         "images": [f"imgs/{a}"],
         "objects": {"ref": ["a dog", "a cat"], "bbox": [[100, 200, 300, 400], [0, 0, 999, 999]],
                     "bbox_type": "norm1000"}},
        {"messages": [{"role": "user", "content": "<image>Point at the <ref-object>"},
                      {"role": "assistant", "content": "<bbox>"}],
         "images": [f"imgs/{b}"],
         "objects": {"ref": ["corner"], "bbox": [[0.5, 0.25]], "bbox_type": "norm1"}},
        {"messages": [{"role": "user", "content": "<image>Find <ref-object>"},
                      {"role": "assistant", "content": "<bbox><bbox>"}],
         "images": [f"imgs/{a}"],
         "objects": {"ref": ["sheep"], "bbox": [[1, 2, 3, 4]]}},  # 2 tags, 1 box: reported
    ])
    return [
        FormatFixture("ms-swift", "messages + images / videos rows",
                      [_src(messages, "swift"), _src(messages, "messages")],
                      {"0": Expect("A red rectangle.", images=1,
                                   system="You are a helpful assistant.", n_messages=3),
                       "1": Expect("The second is darker.", images=2,
                                   first_user=["image", "image", "text"]),
                       "2": Expect("A flat grey that brightens.", videos=1),
                       "3": Expect("Fine.")}),
        FormatFixture("ms-swift", "query / response / history / system rows",
                      [_src(qr, "swift")],
                      {"0": Expect("Red.", images=1, system="Be brief.", n_messages=5),
                       "1": Expect("Paris.", n_messages=2)}),
        FormatFixture("ms-swift", "grounding: <ref-object> / <bbox> tags + objects "
                                  "(real, norm1000, norm1 point)",
                      [_src(grounding, "swift")],
                      {"0": Expect("[100, 100, 500, 500]", images=1),
                       "1": Expect("a dog[100, 200, 300, 400] and a cat[0, 0, 999, 999]",
                                   images=1),
                       "2": Expect("[500, 250]", images=1)},
                      {"3": "2 <bbox> tags but 1 boxes"}),
    ]


# --- Qwen finetune demo, LLaVA, OpenAI ----------------------------------------------------------

def _qwen_llava_openai(root: Path) -> list[FormatFixture]:
    q = root / "qwen_finetune"
    _image(q / "images" / "001.jpg", (80, 60))
    _image(q / "images" / "002.jpg", (60, 80), (0, 0, 200))
    _video(q / "videos" / "005.mp4")
    qwen = _json(q / "demo.json", [
        {"image": "images/001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat's the main object in this picture?"},
            {"from": "gpt", "value": "A red square."}]},
        {"image": ["images/001.jpg", "images/002.jpg"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat differs between the pictures?"},
            {"from": "gpt", "value": "The colour."}]},
        {"video": "videos/005.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens in the video?"},
            {"from": "gpt", "value": "It gets brighter."}]},
    ])
    v = root / "llava"
    _image(v / "coco" / "train2017" / "000000033471.jpg", (96, 72))
    llava = _json(v / "llava_v1_5_mix665k.json", [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "What type of vehicle is it?"},
            {"from": "gpt", "value": "A bus."}]},
        {"id": "oFYkGtn_0", "model": "", "conversations": [
            {"from": "human", "value": "Write a haiku about rain."},
            {"from": "gpt", "value": "Soft rain on the roof"}]},
    ])
    single = _json(v / "one_sample.json", {
        "id": "single", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A bus."}]})
    o = root / "openai"
    frame_dir = o / "frames"
    frames = [f"frames/{_image(frame_dir / f'{k}.jpg', (48, 32))}" for k in range(4)]
    _image(o / "local.png", (50, 40))
    openai = _jsonl(o / "chat.jsonl", [
        {"id": "oa-1", "messages": [
            {"role": "system", "content": "You are a vision assistant."},
            {"role": "user", "content": [
                {"type": "text", "text": "What's in this image?"},
                {"type": "image_url", "image_url": {"url": _data_uri(), "detail": "high"}}]},
            {"role": "assistant", "content": "A green rectangle."}]},
        {"id": "qwen-uri", "messages": [
            {"role": "user", "content": [{"type": "image", "image": _data_uri(subtype=None)},
                                         {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Green."}]}]},
        {"id": "qwen-file", "messages": [
            {"role": "user", "content": [{"type": "image", "image": f"file://{o / 'local.png'}"},
                                         {"type": "video", "video": frames, "sample_fps": 2},
                                         {"type": "text", "text": "Same colour?"}]},
            {"role": "assistant", "content": "Yes.", "reasoning_content": "Both are red."}]},
    ])
    return [
        FormatFixture("Qwen2.5-VL qwen-vl-finetune", "llava_json: image, image list, video",
                      [_src(qwen, "llava_json"), _src(qwen, "sharegpt")],
                      {"0": Expect("A red square.", images=1, first_user=["image", "text"]),
                       "1": Expect("The colour.", images=2,
                                   first_user=["image", "text", "image", "text"]),
                       "2": Expect("It gets brighter.", videos=1)}),
        FormatFixture("LLaVA", "llava_v1_5_mix665k: multi-turn, text-only",
                      [_src(llava, "llava_json")],
                      {"000000033471": Expect("A bus.", images=1, n_messages=4),
                       "oFYkGtn_0": Expect("Soft rain on the roof")}),
        FormatFixture("LLaVA", "one sample as a JSON object (not a list)",
                      [_src(single, "llava_json"), _src(single, "sharegpt")],
                      {"single": Expect("A bus.", images=1)}),
        FormatFixture("OpenAI / qwen-vl-utils", "messages with image_url data URIs, Qwen's "
                                                "data:image;base64, file://, frame-list video",
                      [_src(openai, "messages")],
                      {"oa-1": Expect("A green rectangle.", images=1,
                                      system="You are a vision assistant.",
                                      first_user=["text", "image"]),
                       "qwen-uri": Expect("Green.", images=1),
                       "qwen-file": Expect("Yes.", images=1, videos=1,
                                           first_user=["image", "video", "text"])}),
    ]


# --- Hugging Face parquet ---------------------------------------------------------------------

def _png_bytes(size=(64, 48), color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _hf_parquet(root: Path) -> list[FormatFixture]:
    """Parquet files as the hub serves them, written with pyarrow alone (no ``datasets``
    feature metadata): image cells as ``{bytes, path}`` structs (what an ``Image`` feature
    stores, e.g. LLaMA-Factory's mllm_demo pushed to the hub: ``messages`` with tags +
    ``images``) and as raw ``binary`` (many exports of VQA sets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    h = root / "hf_parquet"
    h.mkdir(parents=True, exist_ok=True)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    tagged = pa.table({
        "messages": [_chat("<image>Who is this?", "A red square."),
                     _chat("<image><image>Compare them.", "Same size.")],
        "images": pa.array([[{"bytes": _png_bytes(), "path": "a.png"}],
                            [{"bytes": _png_bytes(), "path": "b.png"},
                             {"bytes": _png_bytes((48, 64)), "path": "c.png"}]],
                           type=pa.list_(struct)),
    })
    pq.write_table(tagged, h / "mllm_demo-train.parquet")
    raw = pa.table({"question_id": ["q1", "q2"], "image": [_png_bytes(), _png_bytes((32, 96))],
                    "question": ["What colour?", "How wide?"], "answer": ["red", "wide"]})
    pq.write_table(raw, h / "vqa-train.parquet")
    return [
        FormatFixture("Hugging Face parquet", "messages with <image> tags + images as "
                                              "{bytes, path} structs",
                      [_src(h / "mllm_demo-train.parquet", "hf_dataset")],
                      {"0": Expect("A red square.", images=1, first_user=["image", "text"]),
                       "1": Expect("Same size.", images=2, first_user=["image", "image", "text"])}),
        FormatFixture("Hugging Face parquet", "question/answer + raw binary image bytes",
                      [_src(h / "vqa-train.parquet", "hf_dataset", columns={"id": "question_id"})],
                      {"q1": Expect("red", images=1, first_user=["image", "text"]),
                       "q2": Expect("wide", images=1, first_user=["image", "text"])}),
    ]


def write_format_fixtures(out_dir: str | Path) -> list[FormatFixture]:
    """Write every fixture under ``out_dir`` and return them (see the module doc)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return (_llamafactory(out_dir) + _swift(out_dir) + _qwen_llava_openai(out_dir)
            + _hf_parquet(out_dir))
