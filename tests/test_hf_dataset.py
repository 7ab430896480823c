"""``format: hf_dataset`` (data/sources/hf_dataset.py): local parquet and save_to_disk datasets
in published layouts (DocVQA, ChartQA, chat columns) become samples that encode; images stay
lazy ``hfrow://`` references."""

from __future__ import annotations

import io
import multiprocessing
import pickle

import pytest
from datasets import Dataset, DatasetDict, Features, Image as HFImage, List, Value
from PIL import Image

from data.config import SourceConfig
from data.encode import SampleEncoder, VisionBudget
from data.media.images import image_size, load_image
from data.planner import TokenPlanner
from data.samples import BadSampleLog, DataError
from data.sources import load
from tests.helpers.files import png

BUDGET = VisionBudget(64 * 64, 256 * 256)


def docvqa_parquet(folder):
    """lmms-lab/DocVQA layout (questionId, question, question_types, image, docId, answers)."""
    features = Features({"questionId": Value("string"), "question": Value("string"),
                         "question_types": List(Value("string")), "image": HFImage(),
                         "docId": Value("int64"), "answers": List(Value("string"))})
    rows = {"questionId": ["q0", "q1", "q2", "q3", "q4"],
            "question": ["What is the title?", "Who signed?", "Date?", "Total?", "Page?"],
            "question_types": [["layout"], ["handwritten"], ["others"], ["table"], ["others"]],
            "image": [png((96, 128), "white"), png((160, 64), "gray"), None,
                      png((64, 64), "white"), png((64, 64), "white")],
            "docId": [1, 2, 3, 4, 5],
            "answers": [["ITC Limited", "itc limited"], ["J. Smith"], ["1999"], [], [""]]}
    folder.mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(
        str(folder / "validation-00000-of-00001.parquet"))
    return folder


def test_subset_picks_a_config_of_a_local_hub_snapshot(tmp_path):
    """lmms-lab/DocVQA has configs DocVQA and InfographicVQA; a downloaded snapshot keeps the
    card that names them, and ``subset`` picks one as ``load_dataset(path, name)`` does."""
    root = tmp_path / "snapshot"
    docvqa_parquet(root / "DocVQA")
    Dataset.from_dict({"questionId": ["i0"], "question": ["Which year?"], "answers": [["2001"]],
                       "image": [png((64, 64), "white")]},
                      features=Features({"questionId": Value("string"), "question": Value("string"),
                                         "answers": List(Value("string")), "image": HFImage()})
                      ).to_parquet(str(root / "InfographicVQA" / "validation-0.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: DocVQA\n  data_files:\n  - split: validation\n    path: DocVQA/validation-*\n"
        "- config_name: InfographicVQA\n  data_files:\n  - split: validation\n"
        "    path: InfographicVQA/validation-*\n---\n")
    (sample,) = load(SourceConfig(path=str(root), format="hf_dataset", split="validation",
                                  subset="InfographicVQA"))
    assert sample.id == "i0" and sample.answer() == "2001"
    with pytest.raises(ValueError, match="subset names a datasets config"):
        SourceConfig(path="a.json", format="llava_json", subset="DocVQA")


def chartqa_disk(folder):
    """HuggingFaceM4/ChartQA layout (image, query, label list, human_or_machine)."""
    features = Features({"image": HFImage(), "query": Value("string"),
                         "label": List(Value("string")), "human_or_machine": Value("int64")})
    split = {"image": [png((128, 96), "red"), png((96, 96), "blue")],
             "query": ["Highest bar?", "How many bars?"], "label": [["Red"], ["4"]],
             "human_or_machine": [0, 1]}
    DatasetDict({"train": Dataset.from_dict(split, features=features),
                 "test": Dataset.from_dict(split, features=features)}).save_to_disk(str(folder))
    return folder


def decoded_labels(processor, encoded) -> str:
    return processor.tokenizer.decode(encoded["labels"][encoded["labels"] != -100])


def test_docvqa_parquet_folder_end_to_end(tmp_path, processor):
    folder = docvqa_parquet(tmp_path / "DocVQA")
    cfg = SourceConfig(path=str(folder), format="hf_dataset", split="validation",
                       prompt="{question}\nAnswer the question using a single word or phrase.")
    bad = BadSampleLog("skip")
    samples = load(cfg, bad)

    assert [s.id for s in samples] == ["q0", "q1"]  # ids from questionId
    first = samples[0]
    assert first.answer() == "ITC Limited"
    assert first.meta["answers"] == ["ITC Limited", "itc limited"]  # all kept for eval (ANLS)
    assert first.meta["docId"] == 1 and first.meta["question_types"] == ["layout"]
    assert first.messages[0]["content"][1]["text"].startswith("What is the title?\nAnswer the")
    assert first.images[0].startswith("hfrow://")
    assert image_size(samples[1].images[0]) == (64, 160)  # (height, width) from the header
    assert load_image(samples[1].images[0]).getpixel((0, 0)) == (128, 128, 128)

    where = f"{folder} [validation]"
    assert [(r.file, r.index, r.sample_id) for r in bad.records] == [
        (where, 2, "q2"), (where, 3, "q3"), (where, 4, "q4")]
    assert "missing image (column 'image' is empty)" in bad.records[0].reason
    assert "empty answer (column 'answers')" in bad.records[1].reason
    assert "empty answer" in bad.records[2].reason

    encoder, planner = SampleEncoder(processor, BUDGET), TokenPlanner(processor, BUDGET)
    for sample in samples:
        encoded = encoder.encode(sample)
        assert decoded_labels(processor, encoded) == sample.answer() + "<|im_end|>"
        assert planner.plan(sample).total == len(encoded["input_ids"])

    with pytest.raises(DataError, match=r"sample 2 \(id q2\): missing image"):
        load(cfg, BadSampleLog("error"))


def test_chartqa_save_to_disk_guesses_columns_and_picks_split(tmp_path, processor):
    folder = chartqa_disk(tmp_path / "chartqa")
    samples = load(SourceConfig(path=str(folder), format="hf_dataset", split="test"))
    assert [s.answer() for s in samples] == ["Red", "4"]  # label list -> first label
    assert samples[0].messages[0]["content"][-1]["text"] == "Highest bar?"  # query column
    assert "split=test" in samples[0].images[0]
    encoded = SampleEncoder(processor, BUDGET).encode(samples[1])
    assert decoded_labels(processor, encoded) == "4<|im_end|>"

    with pytest.raises(DataError, match="no split 'validation'.*train, test"):
        load(SourceConfig(path=str(folder), format="hf_dataset", split="validation"))


def test_path_string_image_column_resolves_against_the_dataset_folder(tmp_path):
    folder = tmp_path / "paths"
    (folder / "imgs").mkdir(parents=True)
    Image.new("RGB", (64, 48), "green").save(folder / "imgs" / "a.png")
    Dataset.from_dict({"image": ["imgs/a.png", "imgs/missing.png"], "question": ["q", "q"],
                       "answer": ["a", "b"]}).to_parquet(str(folder / "train.parquet"))
    bad = BadSampleLog("skip")
    (sample,) = load(SourceConfig(path=str(folder), format="hf_dataset"), bad)
    assert sample.images == [str(folder / "imgs" / "a.png")]
    assert bad.records[0].index == 1
    assert "image file not found: imgs/missing.png" in bad.records[0].reason


CHAT_LAYOUTS = {
    # TRL's vision datasets (e.g. llava-instruct-mix): image parts carry no reference; the
    # `images` column holds them in order. Arrow gives every part every field (None-filled).
    "messages": [
        {"role": "user", "content": [
            {"type": "image", "text": None}, {"type": "text", "text": "Compare the two."},
            {"type": "image", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "left is red"}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}],
    # LLaMA-Factory's mllm_demo / ms-swift rows pushed to the hub: string contents with tags.
    "messages_tagged": [
        {"role": "user", "content": "<image>\nCompare the two.<image>"},
        {"role": "assistant", "content": "left is red"},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "yes"}],
    "conversations": [
        {"from": "human", "value": "<image>\nCompare the two.<image>"},
        {"from": "gpt", "value": "left is red"},
        {"from": "human", "value": "Sure?"},
        {"from": "gpt", "value": "yes"}],
}


@pytest.mark.parametrize("layout", sorted(CHAT_LAYOUTS))
def test_chat_column_goes_through_the_json_converters(tmp_path, processor, layout):
    good = CHAT_LAYOUTS[layout]
    images = [[png((64, 64), "red"), png((96, 64), "blue")], [png((64, 64), "red")]]
    column = layout.removesuffix("_tagged")
    ds = Dataset.from_dict({column: [good, good], "images": images})
    # A single saved Dataset (no split folders), images embedded as on the hub.
    ds.cast_column("images", List(HFImage())).save_to_disk(str(tmp_path / "chat"))

    bad = BadSampleLog("skip")
    (sample,) = load(SourceConfig(path=str(tmp_path / "chat"), format="hf_dataset"), bad)
    assert len(sample.images) == 2 and sample.images[1].endswith("#0/images/1")
    assert [p["type"] for p in sample.messages[0]["content"]] == ["image", "text", "image"]
    assert "<image>" not in str(sample.messages)  # every tag became its image
    encoded = SampleEncoder(processor, BUDGET).encode(sample)
    assert decoded_labels(processor, encoded) == "left is red<|im_end|>yes<|im_end|>"
    assert encoded["image_grid_thw"].shape[0] == 2
    # Row 1 has two image slots but one image: the converter's count check names it.
    assert bad.records[0].index == 1 and "but 1 images" in bad.records[0].reason


def test_column_mapping_errors_list_the_columns(tmp_path):
    folder = docvqa_parquet(tmp_path / "DocVQA")

    def cfg(**kw):
        return SourceConfig(**{"path": str(folder), "format": "hf_dataset", "split": "validation",
                               **kw})

    columns = "questionId, question, question_types, image, docId, answers"
    with pytest.raises(DataError, match=f"columns.answer='answer' is not a column.*{columns}"):
        load(cfg(columns={"answer": "answer"}))
    with pytest.raises(DataError, match="unknown column role 'caption'.*image, question, answer"):
        load(cfg(columns={"caption": "question"}))
    with pytest.raises(DataError, match=r"prompt placeholder \{query\}.*" + columns):
        load(cfg(prompt="{query}?"))
    with pytest.raises(DataError, match="column 'docId' holds no images"):
        load(cfg(columns={"image": "docId"}))
    with pytest.raises(DataError, match="'question' is both the image and the question column"):
        load(cfg(columns={"image": "question"}))
    with pytest.raises(DataError, match="cannot load split 'train'.*Unknown split"):
        load(cfg(split="train"))
    with pytest.raises(DataError, match="dataset folder not found"):
        load(SourceConfig(path=str(tmp_path / "nowhere"), format="hf_dataset"))


def _noise_png(seed: int) -> dict:
    import random

    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (128, 128), rng.randbytes(128 * 128 * 3)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_references_hold_no_pixels_and_resolve_in_a_fresh_worker_process(tmp_path):
    images = [_noise_png(i) for i in range(6)]  # ~50 kB each, incompressible
    Dataset.from_dict({"image": images, "question": ["q"] * 6, "answer": ["a"] * 6},
                      features=Features({"image": HFImage(), "question": Value("string"),
                                         "answer": Value("string")})
                      ).save_to_disk(str(tmp_path / "noise"), max_shard_size="100KB")
    samples = load(SourceConfig(path=str(tmp_path / "noise"), format="hf_dataset"))
    assert len(samples) == 6 and len(list((tmp_path / "noise").glob("*.arrow"))) > 1  # shards
    image_bytes = sum(len(im["bytes"]) for im in images)
    assert len(pickle.dumps(samples)) < image_bytes / 20  # references, not bytes

    refs = [s.images[0] for s in samples]
    # A spawned process starts with no open files and no cache, as a DataLoader worker may.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        sizes = pool.map(image_size, refs)
        pixels = [im.tobytes() for im in pool.map(load_image, refs)]
    assert sizes == [(128, 128)] * 6
    assert pixels == [Image.open(io.BytesIO(im["bytes"])).convert("RGB").tobytes() for im in images]
