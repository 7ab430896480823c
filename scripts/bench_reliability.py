"""Ways a run can give a wrong answer without an error, each tried for real on the tiny model
(CPU, through the real entry points where a run is involved). Prints name=value lines, 1 where
the run was protected:

  bomb_samples_reported=K/K, bomb_crashes   decompression bombs (a PNG header claiming 10^10
                                  pixels, one past PIL's limit, the same inline as a data URI and
                                  as a parquet image cell) read, planned and encoded as training
                                  does under on_bad_sample=skip: each reported, none crashing
  pdf_huge_page_pixels            a 200-inch PDF page asked at 600 dpi: pixels rendered
                                  (bounded by data.media.pdfpages.MAX_RENDER_PIXELS)
  stale_cache_detected            python -m eval, the weights at the checkpoint's path changed,
                                  python -m eval again into the same folder: predictions
                                  regenerated, the row's fingerprint changed
  results_merged_across_runs      two python -m eval runs of different tasks into one folder:
                                  results/<checkpoint>.json holds both tasks
  output_dir_reuse_refused, concurrent_runs_refused, fp16_plain_engine_safe,
  pickle_checkpoint_refused, disk_full_clear_error
                                  a folder holding a previous run refused without resume /
                                  overwrite; a folder in use (run.lock) refused; fp16 outside
                                  DeepSpeed refused at config load; a crafted pickle in a
                                  checkpoint refused without running; a save that fills the
                                  disk: one message with the free space, partial removed, the
                                  previous checkpoint kept (tests/test_run_safety.py backs each,
                                  with the end-to-end runs, NaN streaks and lr overrides)
  nan_streak_keeps_good_checkpoints
                                  a run whose loss turns NaN at steps 3 and 4 (checkpoint every
                                  step, keep_last=1, max_nan_steps=2): it stops with an error and
                                  checkpoint-2, finite, is what is left
  lr_override_on_resume_applied   a 2-step run at lr 3e-3 resumed with train.lr=1e-3: steps 3-4
                                  log (and train at) 1e-3
  kills_resumed_identical=N/N     SIGKILL at N random steps of a LoRA run (checkpoint every
                                  step), each resumed with train.resume=auto: losses equal to the
                                  uninterrupted run's

Run with no arguments (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.launch import losses, run_train  # noqa: E402


# --- Decompression bombs ---------------------------------------------------------------------

def bomb_figures(work: Path, processor) -> dict:
    import base64
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.config import DataConfig, SourceConfig
    from data.tools.faults import audit, png_claiming

    work.mkdir(parents=True, exist_ok=True)
    (work / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    (work / "past_limit.png").write_bytes(png_claiming(12_000, 8_000))  # 96 MP > PIL's 89.5 MP
    inline = "data:image/png;base64," + base64.b64encode(png_claiming(50_000, 50_000)).decode()

    def chat(sample_id: str, image: str) -> dict:
        return {"id": sample_id, "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "grey"}]}

    bombs = {"png-huge": "huge.png", "png-past-limit": "past_limit.png", "inline": inline}
    (work / "bombs.json").write_text(json.dumps([chat(k, v) for k, v in bombs.items()]))
    pq.write_table(pa.table({"id": ["parquet-cell"], "image": [png_claiming(40_000, 40_000)],
                             "question": ["What is it?"], "answer": ["grey"]}),
                   work / "cells.parquet")
    sources = [SourceConfig(path=str(work / "bombs.json"), name="bombs"),
               SourceConfig(path=str(work / "cells.parquet"), format="hf_dataset", name="cells",
                            columns={"id": "id"})]
    result = audit(DataConfig(sources=sources, on_bad_sample="skip"), processor)
    expected = set(bombs) | {"parquet-cell"}
    reported = {r.sample_id for r in result["bad"]} & expected
    return {"bomb_samples_reported": f"{len(reported)}/{len(expected)}",
            "bomb_crashes": len(result["crashes"])}


def pdf_figures(work: Path) -> dict:
    import pypdfium2

    from data.media import images as images_lib
    from data.media import pdfpages

    pdf = pypdfium2.PdfDocument.new()
    pdf.new_page(14400, 14400)  # 200 x 200 inches, the largest page PDF allows
    path = work / "poster.pdf"
    with open(path, "wb") as f:
        pdf.save(f)
    image = images_lib.load_image(pdfpages.page_ref(str(path), 1, 600))
    return {"pdf_huge_page_pixels": image.width * image.height,
            "pdf_huge_page_bounded": int(image.width * image.height <= pdfpages.MAX_RENDER_PIXELS)}


# --- Eval results ----------------------------------------------------------------------------

def eval_figures(work: Path, model: Path, data: Path) -> dict:
    """``python -m eval`` twice on one output folder: after the weights at the checkpoint's path
    change (stale cache?), and with another task (results merged?)."""
    import json
    import shutil

    import yaml
    from safetensors.torch import load_file, save_file

    from tests.helpers.launch import run_eval

    checkpoint = Path(shutil.copytree(model, work / "checkpoint"))

    def evaluate(out: Path, task: str) -> list[dict]:
        config = work / f"eval-{out.name}-{task}.yaml"
        config.write_text(yaml.safe_dump({
            "output_dir": str(out), "progress": False,
            "checkpoints": [{"name": "base", "path": str(checkpoint)}],
            "tasks": [{"name": task, "data": str(data), "limit": 2}],
            "generation": {"batch_size": 2, "max_new_tokens": 2}}))
        run_eval(config)
        return json.loads((out / "results/base.json").read_text())

    [before] = evaluate(work / "stale", "synthetic_vqa")
    weights = checkpoint / "model.safetensors"  # retrained in place: one tensor changes
    tensors = load_file(weights)
    name = next(n for n, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights, metadata={"format": "pt"})
    [after] = evaluate(work / "stale", "synthetic_vqa")
    stale_detected = after["generated"] > 0 and after["fingerprint"] != before["fingerprint"]

    evaluate(work / "merged", "synthetic_vqa")
    rows = evaluate(work / "merged", "synthetic_doc")
    merged = {r["task"] for r in rows} == {"synthetic_vqa", "synthetic_doc"}
    return {"stale_cache_detected": int(stale_detected), "results_merged_across_runs": int(merged)}


# --- Run folders and checkpoints -------------------------------------------------------------

def run_folder_figures(work: Path, model: Path, data: Path) -> dict:
    """The guards a training run passes before it writes, each met as a user would meet it:
    a folder holding a previous run, a folder in use, fp16 without loss scaling, a crafted
    pickle in a checkpoint, a disk that fills during a save."""
    import torch

    from data.configio import ConfigError, load_config, to_dict
    from tests.helpers.checkpoint_faults import CreatesFile, SmallEngine
    from tests.helpers.launch import QUICK_TRAIN, TRAIN_CONFIG
    from train import checkpoint as ckpt
    from train import run_folder, safeload
    from train.config import Config
    from train.distributed import DistInfo
    from train.errors import CheckpointError, RunFolderError

    work.mkdir(parents=True, exist_ok=True)
    out = work / "previous"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a previous run's
    cfg = load_config(Config, TRAIN_CONFIG, [f"model.path={model}", f"data.train={data}",
                                             f"train.output_dir={out}", *QUICK_TRAIN])
    figures = {}
    try:
        run_folder.claim(cfg, to_dict(cfg))
        figures["output_dir_reuse_refused"] = 0
    except RunFolderError:
        figures["output_dir_reuse_refused"] = 1

    lock, _ = run_folder.take_lock(work, "first")
    try:
        run_folder.take_lock(work, "second")
        figures["concurrent_runs_refused"] = 0
    except RunFolderError:
        figures["concurrent_runs_refused"] = 1
    run_folder.release_lock(lock)

    try:
        load_config(Config, TRAIN_CONFIG, [f"model.path={model}", f"data.train={data}",
                                           "model.dtype=float16"])
        figures["fp16_plain_engine_safe"] = 0
    except ConfigError:
        figures["fp16_plain_engine_safe"] = 1

    marker = work / "code-ran"
    crafted = work / "crafted"
    crafted.mkdir()
    torch.save({"x": CreatesFile(marker)}, crafted / "trainer_state.pt")
    try:
        safeload.load_file(crafted / "trainer_state.pt")
        refused = False
    except CheckpointError:
        refused = True
    figures["pickle_checkpoint_refused"] = int(refused and not marker.exists())

    saves, dist = work / "saves", DistInfo(0, 1, 0, torch.device("cpu"))
    ckpt.save_checkpoint(saves, 1, SmallEngine(), dist, keep_last=2)
    try:
        ckpt.save_checkpoint(saves, 2, SmallEngine(full_disk_in="save"), dist, keep_last=2)
        clear = False
    except CheckpointError as e:
        clear = "free on that disk" in str(e)
    kept = ckpt.resolve_resume(saves, "auto")
    figures["disk_full_clear_error"] = int(clear and kept is not None and kept.name == "checkpoint-1"
                                           and not list(saves.glob(".tmp-*")))
    return figures


# --- NaN streaks and lr overrides -------------------------------------------------------------

def nan_and_lr_figures(work: Path, model: Path, data: Path) -> dict:
    """In-process training runs on the tiny model, a fault hook making the loss NaN."""
    import torch
    from safetensors.torch import load_file

    from data.configio import load_config
    from tests.helpers.faults import TrainFaults
    from tests.helpers.launch import QUICK_TRAIN, TRAIN_CONFIG, metrics
    from train import layout
    from train.config import Config
    from train.errors import NonFiniteError
    from train.trainer import train

    def config(out: Path, *overrides: str) -> Config:
        return load_config(Config, TRAIN_CONFIG, [
            f"model.path={model}", f"data.train={data}", f"train.output_dir={out}", *QUICK_TRAIN,
            "train.batch_size=2", "logging.loss_plot=false", *overrides])

    out = work / "nan-streak"
    try:
        train(config(out, "train.max_steps=5", "train.save_every=1", "train.keep_last=1",
                     "train.max_nan_steps=2"), TrainFaults(nan_steps={3, 4}))
        stopped = False
    except NonFiniteError:
        stopped = True
    kept = layout.checkpoint_folders(out)
    finite = all(torch.isfinite(t).all() for folder in kept
                 for f in folder.glob("*.safetensors") for t in load_file(f).values())
    figures = {"nan_streak_keeps_good_checkpoints": int(
        stopped and [p.name for p in kept] == ["checkpoint-2"] and finite)}

    out = work / "lr-override"
    train(config(out, "train.max_steps=2", "train.save_every=1", "train.lr_schedule=constant",
                 "train.lr=3e-3"))
    train(config(out, "train.max_steps=4", "train.resume=auto", "train.lr_schedule=constant",
                 "train.lr=1e-3"))
    lrs = {row["step"]: row["lr"] for row in metrics(out)}
    figures["lr_override_on_resume_applied"] = int(
        [lrs[s] for s in (1, 2, 3, 4)] == [3e-3, 3e-3, 1e-3, 1e-3])
    return figures


# --- Kills -----------------------------------------------------------------------------------

def kill_figures(work: Path, model: Path, data: Path, kills: int, steps: int, seed: int) -> dict:
    """SIGKILL a 1-process LoRA run at ``kills`` random steps (one run per kill), resume each
    with ``train.resume=auto`` and compare every step's loss with the uninterrupted run's."""
    common = ("train.batch_size=2", f"train.max_steps={steps}", "train.save_every=1",
              "logging.loss_plot=false")
    run_train(model, work / "uninterrupted", *common, data=data)
    reference = losses(work / "uninterrupted")
    identical = 0
    for kill_at in random.Random(seed).sample(range(2, steps + 1), kills):
        out = work / f"killed-at-{kill_at}"
        killed = run_train(model, out, *common, data=data,
                           faults=("--kill-at-step", str(kill_at)), check=False)
        if killed.returncode == 0:
            sys.exit(f"the SIGKILL at step {kill_at} did not happen")
        run_train(model, out, *common, "train.resume=auto", data=data)
        identical += losses(out) == reference
    return {"kills_resumed_identical": f"{identical}/{kills}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from data.processor import build_processor
    from data.tools.synthetic import generate
    from train.debug_models import build_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench_reliability-"))
    processor = build_processor()
    model = build_tiny_checkpoint(work / "tiny-dense", "dense", 0, processor)
    corpus = generate(work / "data", train_per_task=8, eval_per_task=4)
    figures: dict[str, object] = {}
    figures.update(bomb_figures(work / "bombs", processor))
    figures.update(pdf_figures(work))
    figures.update(eval_figures(work / "eval", model, corpus["eval"]))
    figures.update(run_folder_figures(work / "runs", model, corpus["train"]))
    figures.update(nan_and_lr_figures(work / "nan-lr", model, corpus["train"]))
    figures.update(kill_figures(work / "kills", model, corpus["train"], args.kills, args.steps,
                                args.seed))
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
