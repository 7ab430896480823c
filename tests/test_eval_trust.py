"""Whether an eval's numbers can be trusted (issue #13): predictions are cached on the
checkpoint's content, not its path; results of several runs into one folder add up and never
mix two weights under one name; a half-written predictions line is skipped and regenerated;
the MathVista judge keeps its key to the configured https host; checkpoint names cannot
escape the output folder, and names are escaped in the leaderboards."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from data.configio import ConfigError, load_config
from eval import leaderboard
from eval.config import EvalConfig
from eval.runner import evaluate


def config(ck: Path, data: Path, out: Path, tasks=("synthetic_vqa",), limit: int = 2, **keys) -> EvalConfig:
    """One checkpoint named ``base``, ``limit`` samples of each task, the quickest generation."""
    entries = ", ".join(f"{{name: {t}, data: {data}, limit: {limit}}}" for t in tasks)
    return load_config(EvalConfig, None, [
        f"output_dir={out}", f"checkpoints=[{{name: base, path: {ck}}}]", f"tasks=[{entries}]",
        "progress=false", "generation.batch_size=2", "generation.max_new_tokens=2",
        *(f"{k}={v}" for k, v in keys.items())])


def perturb(folder: Path) -> None:
    """Retrain in place, as far as the eval can tell: one tensor changes, same file name,
    same shapes (so the same safetensors header layout)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture
def checkpoint(tiny, tmp_path) -> Path:
    """A private copy of the tiny dense checkpoint, free to be overwritten."""
    return Path(shutil.copytree(tiny["dense"], tmp_path / "ck"))


def results(out: Path) -> list[dict]:
    return json.loads((out / "results/base.json").read_text())


# --- 1. predictions are cached on the weights, not the path ----------------------------------

def test_weights_replaced_at_the_same_path_are_evaluated_again(checkpoint, corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    [first] = evaluate(config(checkpoint, corpus["eval"], out))
    assert first["generated"] == 2 and len(first["fingerprint"]) == 16
    [same] = evaluate(config(checkpoint, corpus["eval"], out))
    assert (same["generated"], same["fingerprint"]) == (0, first["fingerprint"])

    perturb(checkpoint)
    capsys.readouterr()
    [again] = evaluate(config(checkpoint, corpus["eval"], out))
    assert again["generated"] == 2 and again["fingerprint"] != first["fingerprint"]
    assert again["config_hash"] != first["config_hash"]
    assert (f"checkpoint base changed since its cached predictions (fingerprint "
            f"{first['fingerprint']} -> {again['fingerprint']}): regenerating") in capsys.readouterr().out
    [row] = results(out)
    assert row["fingerprint"] == again["fingerprint"]


def _safetensors(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def test_adapter_fingerprint_follows_content_config_and_large_file_samples(tmp_path, monkeypatch):
    from eval import fingerprint as fp
    from eval.checkpoints import ResolvedCheckpoint

    adapter = tmp_path / "adapter"
    _safetensors(adapter / "adapter_model.safetensors", {"a": torch.zeros(64, 64), "b": torch.zeros(64, 64)})
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    ck = ResolvedCheckpoint(model="Qwen/Qwen3-VL-2B-Instruct", adapter=str(adapter),
                            processor="Qwen/Qwen3-VL-2B-Instruct", kind="lora", arch="dense")
    seen = {fp.checkpoint_fingerprint(ck)}
    assert fp.checkpoint_fingerprint(ck) in seen  # stable

    _safetensors(adapter / "adapter_model.safetensors", {"a": torch.zeros(64, 64), "b": torch.ones(64, 64)})
    seen.add(fp.checkpoint_fingerprint(ck))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16}))
    seen.add(fp.checkpoint_fingerprint(ck))
    assert len(seen) == 3

    # Files above the size limit are sampled, not read whole: a change in any tensor still shows
    # (here the second tensor, which is in no first/middle/last block of a 16 KiB sample).
    monkeypatch.setattr(fp, "LARGE_FILE", 1024)
    monkeypatch.setattr(fp, "BLOCK", 16)
    sampled = fp.checkpoint_fingerprint(ck)
    _safetensors(adapter / "adapter_model.safetensors",
                 {"a": torch.zeros(64, 64), "b": torch.ones(64, 64).index_fill_(0, torch.tensor([0]), 2.0)})
    assert fp.checkpoint_fingerprint(ck) != sampled


def test_pickled_weights_count_and_training_state_does_not(tmp_path):
    from eval.fingerprint import describe

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"weights")
    (tmp_path / "optimizer.pt").write_bytes(b"state")
    before = describe(str(tmp_path))
    (tmp_path / "optimizer.pt").write_bytes(b"other state")
    assert describe(str(tmp_path)) == before
    (tmp_path / "pytorch_model.bin").write_bytes(b"weightz")
    assert describe(str(tmp_path)) != before


def test_hub_base_is_fingerprinted_by_id_and_revision(tmp_path, monkeypatch):
    from eval import fingerprint as fp

    def cached(repo_id, filename, **kw):
        return str(tmp_path / f"models--{repo_id.replace('/', '--')}/snapshots/{revision}/{filename}")

    monkeypatch.setattr(fp, "try_to_load_from_cache", cached)
    revision = "a" * 40
    one = fp.describe("Org/Model")
    assert one == {"hub": "Org/Model", "revision": revision}
    revision = "b" * 40
    assert fp.describe("Org/Model") != one


# --- 2. results of several runs add up ---------------------------------------------------------

def test_runs_of_different_tasks_into_one_folder_keep_both(checkpoint, corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    evaluate(config(checkpoint, corpus["eval"], out, ("synthetic_vqa",), 1, leaderboard=f"{out}/board"))
    evaluate(config(checkpoint, corpus["eval"], out, ("synthetic_doc",), 1, leaderboard=f"{out}/board"))
    assert [r["task"] for r in results(out)] == ["synthetic_vqa", "synthetic_doc"]
    board = json.loads((out / "board.json").read_text())
    assert [e["task"] for e in board] == ["synthetic_vqa", "synthetic_doc"]

    # The same task again replaces its row (one row per task, split and settings).
    evaluate(config(checkpoint, corpus["eval"], out, ("synthetic_vqa",), 1))
    assert [r["task"] for r in results(out)] == ["synthetic_vqa", "synthetic_doc"]

    # New weights under the same name: the old weights' rows go, and the console says which.
    perturb(checkpoint)
    capsys.readouterr()
    [new] = evaluate(config(checkpoint, corpus["eval"], out, ("synthetic_doc",), 1))
    assert [(r["task"], r["fingerprint"]) for r in results(out)] == [("synthetic_doc", new["fingerprint"])]
    said = capsys.readouterr().out
    assert "results of the old weights for tasks synthetic_vqa removed; re-run them" in said
    assert not [p.name for p in (out / "results").iterdir() if p.name != "base.json"]  # no temp files


def test_an_eval_into_a_folder_another_eval_is_using_is_refused(checkpoint, corpus, tmp_path):
    """Two evals into one folder at once would append to the same predictions files."""
    import subprocess
    import sys

    from eval.runner import EVAL_LOCK
    from train.errors import RunFolderError

    out = tmp_path / "eval"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process holds the folder
        (out / EVAL_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                                 "run_id": "other"}))
        with pytest.raises(RunFolderError, match=rf"eval output_dir {out} is in use by run other "
                                                 rf"\(pid {other.pid}"):
            evaluate(config(checkpoint, corpus["eval"], out, limit=1))
        assert not (out / "predictions").exists()
    finally:
        other.kill()
        other.wait()
    # Its process gone, the lock is taken over; the finished eval leaves no lock behind.
    [row] = evaluate(config(checkpoint, corpus["eval"], out, limit=1))
    assert row["n"] == 1 and not (out / EVAL_LOCK).exists()


def test_leaderboard_cli_warns_when_one_name_holds_results_of_two_weights(tmp_path, capsys):
    def folder(name: str, task: str, fingerprint: str) -> Path:
        row = {"checkpoint": "lora", "task": task, "metric": "accuracy", "score": 0.5, "n": 2,
               "fingerprint": fingerprint, "date": "2026-11-23T10:00:00Z"}
        (tmp_path / name / "results").mkdir(parents=True)
        (tmp_path / name / "results/lora.json").write_text(json.dumps([row]))
        return tmp_path / name

    old, new = folder("old", "mmmu_val", "aaaa"), folder("new", "docvqa_val", "bbbb")
    assert leaderboard.main([str(old), str(new)]) == 0
    assert ("warning: checkpoint lora mixes results of different weights (fingerprint aaaa: "
            "mmmu_val; fingerprint bbbb: docvqa_val)") in capsys.readouterr().out
    assert leaderboard.main([str(new)]) == 0 and "warning" not in capsys.readouterr().out


# --- 3. a half-written predictions line ---------------------------------------------------------

def test_half_written_last_prediction_is_skipped_and_regenerated(checkpoint, corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    [first] = evaluate(config(checkpoint, corpus["eval"], out))
    path = out / "predictions/base/synthetic_vqa.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # killed in the middle of writing the last record

    capsys.readouterr()
    [again] = evaluate(config(checkpoint, corpus["eval"], out))
    assert again["generated"] == 1 and again["score"] == first["score"]
    assert f"{path}: line 2 is not a complete prediction record" in capsys.readouterr().out
    assert len([json.loads(line) for line in path.read_text().splitlines()]) == 2  # every line whole

    # A complete last record without its newline is kept, and the next record starts a new line.
    path.write_text(path.read_text().splitlines()[0])
    [third] = evaluate(config(checkpoint, corpus["eval"], out))
    assert third["generated"] == 1 and third["score"] == first["score"]
    assert len([json.loads(line) for line in path.read_text().splitlines()]) == 2


# --- 4. the judge keeps its key ------------------------------------------------------------------

class Recorder:
    """A local HTTP server recording (method, path, Authorization) of each request; ``redirect``
    makes it answer every request with a 302 to that URL."""

    def __init__(self, redirect: str | None = None):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append((self.command, self.path, self.headers.get("Authorization")))
                if redirect:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"content": "C"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_judge_does_not_follow_a_redirect_to_another_host_with_the_key(monkeypatch):
    from eval.tasks.mathvista.judge import Judge

    elsewhere = Recorder()  # "localhost" is another host than "127.0.0.1", as far as a key goes
    endpoint = Recorder(redirect=f"http://localhost:{elsewhere.port}/v1/chat/completions")
    try:
        monkeypatch.setenv("JUDGE_KEY", "secret")
        judge = Judge(f"http://127.0.0.1:{endpoint.port}/v1", "m", api_key_env="JUDGE_KEY", timeout_s=10)
        with pytest.raises(RuntimeError, match=r"redirect.*localhost.*not followed"):
            judge.complete("2 + 2?")
        assert endpoint.requests == [("POST", "/v1/chat/completions", "Bearer secret")]
        assert all(auth is None for *_, auth in elsewhere.requests)
        assert elsewhere.requests == []
    finally:
        endpoint.close()
        elsewhere.close()


def judge_config(base_url: str) -> EvalConfig:
    return load_config(EvalConfig, None, [
        "checkpoints=[{name: a, path: b}]",
        f"tasks=[{{name: mathvista_testmini, data: x, judge: {{base_url: '{base_url}', model: m}}}}]"])


@pytest.mark.parametrize("url", ["http://judge.example.com/v1", "http://10.0.0.5:8000/v1", "ftp://judge/v1",
                                 "judge.example.com/v1"])
def test_judge_needs_https_for_a_remote_host(url):
    with pytest.raises(ConfigError, match=r"tasks.mathvista_testmini.judge.base_url"):
        judge_config(url)


@pytest.mark.parametrize("url", ["https://judge.example.com/v1", "http://localhost:8000/v1",
                                 "http://127.0.0.1:8000/v1", "http://[::1]:8000/v1"])
def test_judge_accepts_https_and_plain_http_on_this_machine(url):
    assert judge_config(url).tasks[0].judge["base_url"] == url


# --- 5. names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "a/b", "a\\b", ".", "..", "a b", "<img>", "x\n"])
def test_checkpoint_names_must_be_plain_file_names(name):
    with pytest.raises(ConfigError, match=r"checkpoints\[0\]\.name .*letters, digits"):
        load_config(EvalConfig, None, [f"checkpoints=[{{name: {json.dumps(name)}, path: b}}]",
                                       "tasks=[{name: synthetic_vqa, data: x}]"])


def test_checkpoint_names_may_use_the_allowed_punctuation():
    cfg = load_config(EvalConfig, None, ["checkpoints=[{name: 'lora-r8_v1.2+x@y=z', path: b}]",
                                         "tasks=[{name: synthetic_vqa, data: x}]"])
    assert cfg.checkpoints[0].name == "lora-r8_v1.2+x@y=z"


EVIL = '<img src=x onerror=alert(1)>[link](javascript:alert(2))'


def evil_rows() -> list[dict]:
    """Result rows as a hand-edited or foreign results file may hold them."""
    row = {"model": "<b>m</b>", "benchmark": "<i>B</i>", "split": None, "n": 3,
           "config_hash": None, "date": "2026-11-23T10:00:00Z"}
    return [dict(row, checkpoint="base", task="t<u>", metric="acc<s>", score=0.5),
            dict(row, checkpoint=EVIL, task="t<u>", metric="acc<s>", score=0.7)]


def test_markdown_leaderboard_escapes_names(tmp_path):
    md = leaderboard.markdown(evil_rows(), base="base")
    for raw in ("<img", "<u>", "<s>", "[link]("):
        assert raw not in md, raw
    assert "&lt;img src=x onerror=alert(1)&gt;\\[link\\](javascript:alert(2))" in md  # text, no link
    assert "t&lt;u&gt; (acc&lt;s&gt;)" in md and "n per task: t&lt;u&gt;=3" in md
    md_file, _ = leaderboard.write(evil_rows(), tmp_path / "board", base="base")
    assert "<img" not in md_file.read_text()


def test_html_leaderboard_escapes_names(tmp_path):
    html = leaderboard.write_html(evil_rows(), tmp_path / "board.html", base="base").read_text()
    for raw in ("<img", "<u>", "<s>", "<b>m", "<i>B"):
        assert raw not in html, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
