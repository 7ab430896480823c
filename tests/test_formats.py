"""Corpora in other projects' published layouts (data/tools/format_fixtures.py: LLaMA-Factory,
ms-swift, Qwen's finetune demo, LLaVA, OpenAI chats) read as those projects mean them, and no
record trains without the media it names, nor crashes a reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from data.config import SourceConfig
from data.samples import BadSampleLog, DataError
from data.sources import FORMATS, load
from data.tools.convert import convert
from data.tools.format_fixtures import check_fixture, write_format_fixtures
from tests.helpers.files import write_json, write_jsonl


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return write_format_fixtures(tmp_path_factory.mktemp("formats"))


def fixture_named(fixtures, project: str, layout_start: str):
    return next(f for f in fixtures if f.project == project and f.layout.startswith(layout_start))


def read(path, fmt="messages", **kw):
    """(samples, bad-sample records) of a source read under the skip policy."""
    log = BadSampleLog("skip")
    samples = load(SourceConfig(path=str(path), format=fmt, **kw), log)
    return samples, log.records


def texts(sample) -> list[str]:
    return ["".join(p.get("text", "") for p in m["content"]) for m in sample.messages]


def types(message) -> list[str]:
    return [p["type"] for p in message["content"]]


@pytest.fixture
def pics(tmp_path):
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (64, 48), color).save(tmp_path / name)
    return tmp_path


def test_every_published_layout_reads_as_its_project_means_it(fixtures):
    assert len(fixtures) >= 12
    assert {f.project for f in fixtures} >= {"LLaMA-Factory", "ms-swift", "LLaVA",
                                             "Qwen2.5-VL qwen-vl-finetune", "OpenAI / qwen-vl-utils"}
    problems = {f.name: check_fixture(f) for f in fixtures}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}


def test_check_fixture_reports_what_differs(fixtures):
    fixture = fixture_named(fixtures, "LLaMA-Factory", "alpaca: alpaca_en_demo")
    fixture.expected["0"].answer = "something else"
    fixture.bad["9"] = "never reported"
    try:
        problems = check_fixture(fixture)
    finally:
        fixture.expected["0"].answer = "Red, yellow, blue."
        del fixture.bad["9"]
    assert any("sample 0: answer 'Red, yellow, blue.'" in p for p in problems)
    assert any("sample 9 not reported" in p for p in problems)


def test_listed_media_in_messages_are_placed_by_tags_or_reported(pics):
    def chat(*contents):
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": c}
                for i, c in enumerate(contents)]
    records = [
        {"id": "across-turns", "messages": chat("<image>First?", "red", "And <image>?", "blue"),
         "images": ["a.png", "b.png"]},
        {"id": "untagged", "messages": chat("Describe.", "two"), "images": ["a.png", "b.png"]},
        {"id": "trl-slots", "images": ["a.png"], "messages": chat(
            [{"type": "image"}, {"type": "text", "text": "Colour?"}], "red")},
        {"id": "tag-without-image", "messages": chat("<image>What is this?", "A.")},
        {"id": "too-many-tags", "messages": chat("<image><image>?", "A."), "images": ["a.png"]},
        {"id": "mixed", "images": ["a.png"], "messages": chat(
            [{"type": "image", "image": "b.png"}, {"type": "text", "text": "<image>?"}], "A.")},
        {"id": "image-in-reply", "messages": chat("Q", "<image>"), "images": ["a.png"]},
        {"id": "missing", "messages": chat("<image>Q", "A."), "images": ["gone.png"]},
    ]
    samples, bad = read(write_jsonl(pics / "m.jsonl", records))
    by_id = {s.id: s for s in samples}
    assert sorted(by_id) == ["across-turns", "trl-slots", "untagged"]
    s = by_id["across-turns"]
    assert s.images == [str(pics / "a.png"), str(pics / "b.png")]
    assert types(s.messages[0]) == ["image", "text"] and types(s.messages[2]) == ["text", "image", "text"]
    assert types(by_id["untagged"].messages[0]) == ["image", "image", "text"]
    assert texts(by_id["untagged"])[0] == "\nDescribe."  # the LLaVA rule, as llava_json
    assert by_id["trl-slots"].images == [str(pics / "a.png")]
    reasons = {r.sample_id: r.reason for r in bad}
    assert reasons["tag-without-image"] == "1 <image> tags but 0 images"
    assert reasons["too-many-tags"] == "2 <image> tags but 1 images"
    assert "use one or the other" in reasons["mixed"]
    assert "images are only read in user turns, not assistant" in reasons["image-in-reply"]
    assert "image file not found: gone.png" in reasons["missing"]


def test_sharegpt_layouts_read_with_role_content_keys_aliases_and_system(pics):
    records = [
        {"id": "role-content", "image": "a.png", "conversations": [
            {"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]},
        {"id": "aliases", "system": "Be brief.", "conversations": [
            {"from": "user", "value": "Hi"}, {"from": "bot", "value": "Hello"},
            {"from": "human", "value": "2+2?"}, {"from": "model", "value": 4}]},
        {"id": "own-system-wins", "system": "ignored", "conversations": [
            {"from": "system", "value": "Mine."}, {"from": "human", "value": "Q"},
            {"from": "chatgpt", "value": "A"}]},
        {"id": "tool", "conversations": [
            {"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
            {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "Sunny."}]},
        {"id": "stranger", "conversations": [{"from": "narrator", "value": "Once"},
                                             {"from": "gpt", "value": "upon"}]},
    ]
    path = write_json(pics / "s.json", records)
    for fmt in ("llava_json", "sharegpt"):
        samples, bad = read(path, fmt, system_prompt="Default system.")
        by_id = {s.id: s for s in samples}
        assert sorted(by_id) == ["aliases", "own-system-wins", "role-content"], fmt
        assert by_id["role-content"].images == [str(pics / "a.png")]
        assert texts(by_id["aliases"]) == ["Be brief.", "Hi", "Hello", "2+2?", "4"]
        assert texts(by_id["own-system-wins"])[0] == "Mine."
        reasons = {r.sample_id: r.reason for r in bad}
        assert "'function_call' turn: tool / function-calling turns are not supported" in reasons["tool"]
        assert "unknown speaker 'narrator' (turn 0)" in reasons["stranger"]
    # The source's system_prompt fills only samples without a system turn of their own.
    samples, _ = read(write_json(pics / "t.json", [
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]),
        "sharegpt", system_prompt="Default system.")
    assert texts(samples[0])[0] == "Default system."


def test_alpaca_builds_history_system_and_the_joined_question(pics):
    path = write_jsonl(pics / "a.jsonl", [
        {"instruction": "Translate.", "input": "<image> Bonjour", "output": "Hello",
         "system": "You translate.", "history": [["Hi", "Hey"]], "images": ["a.png"]},
        {"instruction": "Q", "input": "", "output": ["good", "bad"]},
        {"instruction": "Q", "output": "A", "history": [["only one"]]}])
    samples, bad = read(path, "alpaca")
    (s,) = samples
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert texts(s) == ["You translate.", "Hi", "Hey", "Translate.\n Bonjour", "Hello"]
    assert types(s.messages[3]) == ["text", "image", "text"]
    assert "ranking / preference pair" in bad[0].reason
    assert "'history' entry 0 must be a [question, answer] pair" in bad[1].reason


@pytest.mark.parametrize("fmt, record, reason", [
    ("messages", {"messages": [{"role": "user", "content": "<audio>What is said?"},
                               {"role": "assistant", "content": "Hi."}], "audios": ["s.wav"]},
     "audio is not supported by Qwen3-VL (the record has 'audios')"),
    ("messages", {"messages": [{"role": "user", "content": "<audio>What is said?"},
                               {"role": "assistant", "content": "Hi."}]},
     "audio is not supported by Qwen3-VL: message 0 has an <audio> tag"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
                               {"role": "assistant", "content": "Hi."}]},
     "audio is not supported by Qwen3-VL"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "<audio>Sound?"},
                                    {"from": "gpt", "value": "A bell."}], "audios": ["s.wav"]},
     "audio is not supported by Qwen3-VL"),
    ("alpaca", {"instruction": "<audio>Sound?", "output": "A bell."},
     "audio is not supported by Qwen3-VL"),
    ("swift", {"query": "<audio>Sound?", "response": "A bell.", "audios": ["s.wav"]},
     "audio is not supported by Qwen3-VL"),
])
def test_audio_is_reported_not_dropped(tmp_path, fmt, record, reason):
    samples, bad = read(write_jsonl(tmp_path / "x.jsonl", [record]), fmt)
    assert samples == [] and reason in bad[0].reason


HOSTILE = [
    5, "text", None, [1, 2],
    {"image": 7, "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]},
    {"images": {"a": 1}, "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    {"videos": [5], "messages": [{"role": "user", "content": "<video>"}, {"role": "assistant", "content": "A"}]},
    {"video": {"a": 1}, "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    {"conversations": "hello", "messages": 5},
    {"conversations": [1, 2], "messages": [1, 2]},
    {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": {"x": 1}}]},
    {"conversations": [{"from": ["human"], "value": "Q"}, {"from": "gpt", "value": "A"}]},
    {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": None}]},
    {"messages": [{"role": "user", "content": [5, None]}, {"role": "assistant", "content": "A"}]},
    {"messages": [{"role": {"x": 1}, "content": "Q"}]},
    {"messages": [{"role": "user", "content": "<image>Find <ref-object>"},
                  {"role": "assistant", "content": "<bbox>"}], "images": ["a.png"],
     "objects": {"ref": "sheep", "bbox": [["x", 1, 2, 3]], "image_id": "0"}},
    {"messages": [{"role": "user", "content": "<image>Find <ref-object>"},
                  {"role": "assistant", "content": "<bbox>"}], "images": ["a.png"],
     "objects": {"ref": ["sheep"], "bbox": [[1, 2, 3, 4]], "image_id": [9]}},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
     "system": {"x": 1}, "tools": [{"name": "f"}]},
    {"instruction": 5, "input": [1], "output": {"x": 1}, "history": "none"},
    {"instruction": "Q", "output": "A", "history": [[1, {"a": 1}]], "images": 3.5},
    {"query": None, "response": None, "history": [None]},
    {"id": {"nested": [1]}, "image": ["a.png", 5], "conversations": []},
]


@pytest.mark.parametrize("fmt", ["llava_json", "sharegpt", "messages", "alpaca", "swift"])
def test_no_record_crashes_a_reader(pics, fmt):
    path = write_json(pics / "hostile.json", HOSTILE)
    samples, bad = read(path, fmt)
    assert len(samples) + len(bad) == len(HOSTILE)
    assert all(r.file == str(path) and r.reason for r in bad)
    assert not any("unreadable record" in r.reason for r in bad), [r.reason for r in bad]


def test_an_unforeseen_error_in_a_converter_is_a_bad_record_not_a_crash(pics, monkeypatch):
    from data.sources import sharegpt

    def broken(turns, spec):
        raise KeyError("surprise")

    monkeypatch.setattr(sharegpt, "normalize_turns", broken)
    path = write_json(pics / "s.json", [{"conversations": [{"from": "human", "value": "Q"}]}])
    samples, bad = read(path, "sharegpt")
    assert samples == [] and bad[0].index == 0 and bad[0].file == str(path)
    assert bad[0].reason == "unreadable record 0 (KeyError: 'surprise')"


def test_one_object_files_and_json_lines_in_a_json_file(pics):
    record = {"id": "only", "messages": [{"role": "user", "content": "Q"},
                                         {"role": "assistant", "content": "A"}]}
    (one,), _ = read(write_json(pics / "one.json", record))
    assert one.id == "only" and one.index == 0
    lines = pics / "lines.json"
    lines.write_text(json.dumps(record) + "\n" + json.dumps({**record, "id": "two"}) + "\n")
    samples, _ = read(lines)
    assert [s.id for s in samples] == ["only", "two"]


@pytest.mark.parametrize("head, what", [
    (b"PAR1\x15\x04", "is a parquet file; read it with format: hf_dataset"),
    (b"ARROW1\x00\x00", "is an Arrow file; read it with format: hf_dataset"),
    (b"\xff\xff\xff\xff\x10\x00", "is an Arrow stream file"),
    (b"\x1f\x8b\x08\x00", "is gzip-compressed"),
])
def test_binary_files_are_named_not_called_bad_utf8(tmp_path, head, what):
    path = tmp_path / "train.json"
    path.write_bytes(head + bytes(range(256)))
    for fmt in ("llava_json", "messages", "alpaca"):
        with pytest.raises(DataError, match=f"{path} {what}"):
            read(path, fmt)
    with pytest.raises(DataError, match="is a folder"):
        read(tmp_path, "sharegpt")


@pytest.mark.parametrize("fmt, record, reason", [
    ("llava_json", {"messages": [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
                                 {"role": "assistant", "content": "A"}]},
     "turn 0: 'content' is a list of content parts (the OpenAI layout): set format: messages"),
    ("sharegpt", {"instruction": "Q", "input": "", "output": "A"},
     "record 0 has 'instruction'/'output' (LLaMA-Factory alpaca layout): set format: alpaca"),
    ("messages", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
     "record 0 has 'conversations' (ShareGPT / LLaVA layout): set format: sharegpt"),
    ("messages", {"messages": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
     "message 0 has 'from'/'value' keys (the ShareGPT layout): set format: sharegpt"),
    ("alpaca", {"query": "Q", "response": "A"},
     "record 0 has 'query'/'response' (ms-swift layout): set format: swift"),
    ("swift", {"pdf": "a.pdf", "question": "Q", "answer": "A"},
     "record 0 has 'pdf' (a question on a PDF): set format: pdf"),
    ("llava_json", {"prompt": "Q", "completion": "A"},
     ("record 0 has no 'conversations' or 'messages' list (format llava_json); its keys: "
      "'prompt', 'completion'. JSON formats: llava_json / sharegpt")),
])
def test_a_record_in_another_layout_names_the_format_to_pick(tmp_path, fmt, record, reason):
    _, bad = read(write_jsonl(tmp_path / "x.jsonl", [record]), fmt)
    assert reason in bad[0].reason


def test_a_dataset_info_read_as_chat_data_says_llamafactory(fixtures):
    info = next(s.path for s in fixture_named(fixtures, "LLaMA-Factory", "alpaca: ").sources
                if s.format == "llamafactory")
    _, bad = read(info, "sharegpt")
    assert "dataset_info.json: set format: llamafactory" in bad[0].reason


def test_llamafactory_entries_hub_ranking_and_selection(fixtures, tmp_path):
    info = next(s.path for s in fixture_named(fixtures, "LLaMA-Factory", "alpaca: ").sources
                if s.format == "llamafactory")
    folder = str(Path(info).parent)
    samples, _ = read(folder, "llamafactory", subset="alpaca_en_demo")  # the folder works too
    assert len(samples) == 2 and samples[0].source.endswith("alpaca_en_demo.json")
    with pytest.raises(DataError, match=r"hf_hub_url: llamafactory/alpaca_en.*format: hf_dataset"):
        read(info, "llamafactory", subset="identity_hub")
    with pytest.raises(DataError, match="ranking \\(preference\\) dataset, which is not supported"):
        read(info, "llamafactory", subset="dpo_en_demo")
    with pytest.raises(DataError, match="lists 9 datasets .*name one with the source's subset"):
        read(info, "llamafactory")
    with pytest.raises(DataError, match="no dataset 'nope'"):
        read(info, "llamafactory", subset="nope")

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    write_json(tmp_path / "d.json", [{"instruction": "<image>Q", "output": "A", "images": ["a.png"]}])
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    write_json(tmp_path / "dataset_info.json", {"d": {"file_name": "d.json"}})
    _, bad = read(tmp_path / "dataset_info.json", "llamafactory")  # one entry: no subset needed
    assert 'maps no images column: add "images": "images" to its columns' in bad[0].reason
    write_json(tmp_path / "dataset_info.json", {"d": {"file_name": "d.json",
                                                      "columns": {"images": "images"}}})
    (s,), _ = read(tmp_path / "dataset_info.json", "llamafactory")
    assert s.images == [str(tmp_path / "a.png")]
    write_json(tmp_path / "dataset_info.json", {"t": {"file_name": "t.parquet"}})
    with pytest.raises(DataError, match=r"t.parquet is a .parquet file.*format: hf_dataset"):
        read(tmp_path / "dataset_info.json", "llamafactory")
    write_json(tmp_path / "dataset_info.json", {"d": {"file_name": "d.json", "columns": {"image": "x"}}})
    with pytest.raises(DataError, match="unknown column 'image'"):
        read(tmp_path / "dataset_info.json", "llamafactory")


def test_swift_boxes_are_relative_to_the_displayed_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200x100, shown 100 wide and 200 high
    Image.new("RGB", (200, 100), "red").save(tmp_path / "phone.jpg", exif=exif)

    def row(user, reply, objects):
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": reply}],
                "images": ["phone.jpg"], "objects": objects}
    path = write_jsonl(tmp_path / "g.jsonl", [
        row("<image>Find <ref-object>", "<bbox>", {"ref": ["cup"], "bbox": [[10, 20, 50, 100]]}),
        row("<image>Find the <ref-object>", "<bbox>", {"ref": ["a", "b"], "bbox": [[1, 2, 3, 4]]}),
        row("<image>Find it", "<bbox>", None),
        row("<image>Find it", "<bbox>", {"bbox": [[10, 20, 50, 100]], "image_id": [1]}),
        row("<image>Find it", "<bbox>", {"bbox": [[150, 20, 180, 100]]}),
        row("<image>Find it", "<bbox>", {"bbox": [[1, 2, 3, 4]], "bbox_type": "pixels"}),
    ])
    samples, bad = read(path, "swift")
    assert [s.answer() for s in samples] == ["[100, 100, 500, 500]"]
    assert texts(samples[0])[0] == "Find cup"
    reasons = [r.reason for r in bad]
    assert reasons[0] == "1 <ref-object> tags but 2 refs in 'objects'"
    assert "the record has no 'objects' to fill them" in reasons[1]
    assert "'objects.image_id' 1 names no image" in reasons[2]
    assert "box lies outside the 100x200 image" in reasons[3]
    assert "'objects.bbox_type' must be one of real, norm1, norm1000" in reasons[4]
    # format messages fills objects the same way when the text has the tags
    (sample,), _ = read(write_jsonl(tmp_path / "m.jsonl", [row("<image>Find <ref-object>", "<bbox>",
                                                              {"ref": ["cup"], "bbox": [[10, 20, 50, 100]]})]))
    assert sample.answer() == "[100, 100, 500, 500]"


def test_images_and_videos_resolve_against_their_own_roots_and_stay_there(tmp_path):
    from data.tools.synthetic import write_grey_video

    (tmp_path / "pics").mkdir()
    (tmp_path / "clips").mkdir()
    (tmp_path / "data").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "pics" / "a.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "outside.png")
    write_grey_video(tmp_path / "clips" / "v.mp4", 6)
    turns = [{"role": "user", "content": "<image><video>Q"}, {"role": "assistant", "content": "A"}]
    path = write_jsonl(tmp_path / "data" / "m.jsonl", [
        {"id": "roots", "messages": turns, "images": ["a.png"], "videos": ["v.mp4"]},
        {"id": "escape", "messages": turns[:1] + turns[1:], "images": ["../outside.png"],
         "videos": ["v.mp4"]}])
    roots = {"image_root": str(tmp_path / "pics"), "video_root": str(tmp_path / "clips")}
    samples, bad = read(path, **roots)
    assert [s.id for s in samples] == ["roots"]
    assert samples[0].images == [str(tmp_path / "pics" / "a.png")]
    assert samples[0].videos[0].source == str(tmp_path / "clips" / "v.mp4")
    assert "resolves outside the data root" in bad[0].reason and "allow_outside_root" in bad[0].reason
    samples, bad = read(path, allow_outside_root=True, **roots)
    assert [s.id for s in samples] == ["roots", "escape"] and not bad
    # video_root defaults to image_root
    _, bad = read(path, image_root=str(tmp_path / "pics"))
    assert "video file not found" in bad[0].reason


@pytest.mark.parametrize("project, layout", [
    ("LLaMA-Factory", "sharegpt (role/content tags) + images"),
    ("Qwen2.5-VL qwen-vl-finetune", "llava_json"),
    ("OpenAI / qwen-vl-utils", "messages"),
    ("ms-swift", "grounding"),
])
def test_convert_writes_messages_that_read_back_the_same(fixtures, tmp_path, project, layout):
    source = fixture_named(fixtures, project, layout).sources[0]
    written, bad = convert(source, tmp_path / "out.jsonl")
    original = load(source, BadSampleLog("skip"))
    assert written == len(original) > 0 and len(bad.records) == len(fixture_named(fixtures, project, layout).bad)
    again = load(SourceConfig(path=str(tmp_path / "out.jsonl"), format="messages"))
    assert [(s.id, s.messages, s.images, s.videos) for s in again] == \
        [(s.id, s.messages, s.images, s.videos) for s in original]
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert all(isinstance(m["content"], list) for m in first["messages"])


def test_new_formats_are_registered():
    assert {"sharegpt", "alpaca", "swift", "llamafactory"} <= set(FORMATS)
