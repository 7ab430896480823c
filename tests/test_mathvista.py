"""MathVista: the published testmini column layout loads (parquet and save_to_disk), rule-based
extraction scores tricky predictions, float precision given as 1.0/2.0 works, and the optional
LLM judge, set in the eval config, is called (only when the rules fail) against a local
OpenAI-compatible server; changing it rescores cached predictions without regenerating them."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from data.configio import load_config
from data.media.dataset_images import open_ref
from data.samples import DataError
from eval.config import EvalConfig
from eval.tasks import get_task
from eval.tasks.mathvista import MATHVISTA_TASKS, MathVistaTask
from eval.tasks.mathvista.extract import rule_score
from eval.tasks.mathvista.judge import Judge
from tests.helpers.benchmark_data import (MATHVISTA_HINT, MATHVISTA_ROWS, mathvista_dataset,
                                          mathvista_folder)

TASK = MATHVISTA_TASKS[0]


def eval_config(data="x", judge: str | None = None) -> EvalConfig:
    """An eval config with the MathVista task, and ``judge`` (YAML flow mapping) on it if given."""
    judge_key = f", judge: {judge}" if judge else ""
    entry = f"{{name: mathvista_testmini, data: {data}{judge_key}}}"
    return load_config(EvalConfig, None, ["checkpoints=[{name: a, path: b}]", f"tasks=[{entry}]",
                                          "progress=false"])


def spec(data, **kw):
    # eval.config.TaskSpec checks the registry, which the lead wires; same fields here.
    return SimpleNamespace(name=TASK.name, data=str(data), split=kw.get("split"), subset=None,
                           image_root=None, prompt=kw.get("prompt"), limit=None, vision={})


@pytest.fixture
def samples(tmp_path):
    return {s.id: s for s in TASK.load(spec(mathvista_folder(tmp_path)))}


def test_loads_parquet_with_image_query_prompt_and_breakdown(samples):
    assert list(samples) == ["1", "2", "3", "4", "5"]
    s = samples["1"]
    content = s.messages[0]["content"]
    assert content[0]["type"] == "image" and len(s.images) == 1
    assert s.images[0].startswith("hfrow://") and open_ref(s.images[0]).size == (96, 64)
    assert content[1]["text"].startswith(MATHVISTA_HINT) and content[1]["text"].endswith("(D) 6")
    assert s.answer() == "5"
    assert samples["4"].meta["precision"] == 2.0 and samples["4"].meta["unit"] == "cm^2"
    assert TASK.breakdown(s) == {"task": "geometry problem solving",
                                 "skill": ["geometry reasoning", "algebraic reasoning"]}


def test_loads_save_to_disk_and_prompt_override(tmp_path):
    from datasets import DatasetDict

    DatasetDict({"testmini": mathvista_dataset()}).save_to_disk(str(tmp_path / "saved"))
    loaded = TASK.load(spec(tmp_path / "saved", prompt="{question} Answer briefly."))
    assert loaded[1].messages[0]["content"][-1]["text"] == "How many bars are there? Answer briefly."


def test_bad_row_names_the_row(tmp_path):
    rows = MATHVISTA_ROWS[:1] + [("9", "Q?", None, None, 1.5, "1.2", "free_form", "float", "t", [])]
    with pytest.raises(DataError, match=r"row 1 \(pid 9\).*precision 1.5"):
        TASK.load(spec(mathvista_folder(tmp_path, rows)))


@pytest.mark.parametrize("pid, prediction, expected", [
    # multi-choice: letters in several forms, choice text, ambiguity
    ("1", "(C)", (1.0, True)),
    ("1", "C. 5", (1.0, True)),
    ("1", "The answer is C.", (1.0, True)),
    ("1", "Answer: (B)", (0.0, True)),
    ("1", "x = 5", (1.0, True)),                      # the only choice text in the response
    ("1", "5", (1.0, True)),
    ("1", "<think>3 or 4?</think>\nFinal answer: C", (1.0, True)),
    ("1", "Either (A) or (B).", (0.0, False)),         # two letters: no guess
    ("1", "I cannot tell.", (0.0, False)),
    ("1", "<think>Let me measure the side, it is", (0.0, False)),  # truncated thinking
    # integer: last number, commas, signs, answer span first
    ("2", "There are 7 bars.", (1.0, True)),
    ("2", "Counting 3 red and 4 blue gives 7", (1.0, True)),
    ("2", "The answer is 7, not 8.", (1.0, True)),
    ("2", "\\boxed{7}", (1.0, True)),
    ("2", "7.0", (1.0, True)),
    ("2", "7.5", (0.0, True)),
    ("2", "-7", (0.0, True)),
    ("2", "seven", (0.0, False)),
    # float, precision 1.0 and 2.0 (the reference crashes on these and scores 0)
    ("3", "slope = 0.48", (1.0, True)),                # rounds to 0.5
    ("3", "0.56", (0.0, True)),                        # rounds to 0.6
    ("4", "The area is 12.566 cm^2.", (1.0, True)),     # unit exponent is not the answer
    ("4", "Answer: 12.57", (1.0, True)),
    ("4", "12.5", (0.0, True)),
    # list answers
    ("5", "The values are [1, 2, 3].", (1.0, True)),
    ("5", "Answer: 1,2,3", (1.0, True)),
    ("5", "[1, 3, 2]", (0.0, True)),
    ("5", "one two three", (0.0, False)),
])
def test_rule_based_scores(samples, pid, prediction, expected):
    assert TASK.score(prediction, samples[pid]) == expected


def meta(answer: str, answer_type: str, precision=None, choices=None) -> dict:
    return {"answer": answer, "answer_type": answer_type, "precision": precision, "unit": None,
            "choices": choices, "question_type": "multi_choice" if choices else "free_form"}


# Issue #16: what MathVista's reference gets after its GPT extraction (a plain number or a choice
# text, then float() / exact match) is what the rules read from Qwen-style replies.
@pytest.mark.parametrize("prediction, row, expected", [
    # <answer>...</answer>: the tag is the answer, whatever numbers stand after it
    ("<answer>12</answer>\nI counted 3 rows of 4.", meta("12", "integer"), (1.0, True)),
    ("<answer>\n7\n</answer> (checked twice, 2 times)", meta("7", "integer"), (1.0, True)),
    ("<answer>(B)</answer> because (A) is too small", meta("4", "text", choices=["3", "4"]),
     (1.0, True)),
    ("<answer>\\boxed{3}</answer> not 5", meta("3", "integer"), (1.0, True)),
    ("<answer>blue</answer> not red", meta("blue", "text"), (1.0, True)),
    ("<answer></answer>", meta("blue", "text"), (0.0, False)),
    # fractions: "1/2", \frac{1}{2} and \boxed{\frac{1}{2}} are 0.5
    ("The ratio is 1/2", meta("0.5", "float", 1.0), (1.0, True)),
    ("\\frac{1}{2}", meta("0.5", "float", 1.0), (1.0, True)),
    ("So $x = -\\dfrac{3}{4}$.", meta("-0.75", "float", 2.0), (1.0, True)),
    ("The answer is \\boxed{\\frac{1}{2}}.", meta("0.5", "float", 1.0), (1.0, True)),
    ("\\boxed{\\frac{8}{2}}", meta("4", "integer"), (1.0, True)),
    ("<answer>3/4</answer>", meta("0.8", "float", 1.0), (1.0, True)),   # 0.75 rounds to 0.8
    ("\\boxed{\\frac{1}{3}}", meta("0.5", "float", 1.0), (0.0, True)),
    ("\\boxed{12}", meta("12", "integer"), (1.0, True)),
    ("\\boxed{1/0}", meta("0", "integer"), (0.0, False)),            # no number, no guess
    # a fraction choice named by its value
    ("\\boxed{\\frac{1}{2}}", meta("1/2", "text", choices=["1/3", "1/2"]), (1.0, True)),
])
def test_answer_tags_fractions_and_boxed(prediction, row, expected):
    assert rule_score(prediction, row) == expected


class ChatServer:
    """A local OpenAI-compatible endpoint returning a canned chat completion."""

    def __init__(self, reply: str):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, self.headers.get("Authorization"), body))
                data = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_judge_used_only_when_rules_fail(samples, monkeypatch):
    server = ChatServer("C")
    try:
        monkeypatch.setenv("JUDGE_KEY", "secret")
        task = MathVistaTask(judge=Judge(server.url, "judge-model", api_key_env="JUDGE_KEY"))
        assert task.score("Answer: (A)", samples["1"]) == (0.0, True)  # rules parse it
        assert server.requests == []
        long = "The side opposite the right angle is the biggest, so x must be the third option."
        assert task.score(long, samples["1"]) == (1.0, True)
        [(path, auth, body)] = server.requests
        assert path == "/v1/chat/completions" and auth == "Bearer secret"
        assert body["model"] == "judge-model" and "(C) 5" in body["messages"][0]["content"]
        assert long in body["messages"][0]["content"]
    finally:
        server.close()


def test_judge_from_the_config_and_none_reply(samples, monkeypatch):
    server = ChatServer("NONE")
    try:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        spec = eval_config(judge=f"{{base_url: '{server.url}', model: m}}").tasks[0]
        task = get_task(spec.name, spec)
        assert task.score("seven bars, I think", samples["2"]) == (0.0, False)
        assert len(server.requests) == 1 and server.requests[0][1] is None  # no key, no header
    finally:
        server.close()


class CannedGenerator:
    """Stands in for the model: every sample gets the same reply, one that no rule can read."""

    processor = SimpleNamespace(apply_chat_template=lambda *args, **kwargs: "assistant\n")
    reply = "I cannot tell."

    def __init__(self):
        self.generated = 0

    def prepare(self, sample, budget):
        return sample

    def generate(self, prepared):
        self.generated += len(prepared)
        return [self.reply] * len(prepared)


def test_changing_the_judge_rescores_cached_predictions_without_generating(tmp_path):
    from eval.runner import evaluate_task

    data, out, generator = mathvista_folder(tmp_path), tmp_path / "eval", CannedGenerator()
    server = ChatServer("C")  # right for pid 1, unreadable for the others

    def run(judge: str | None) -> dict:
        cfg = eval_config(data, judge)
        return evaluate_task(generator, cfg, cfg.checkpoints[0], cfg.tasks[0], out)

    try:
        row = run(judge=None)
        assert (row["generated"], row["rescored"], row["unparsed"]) == (5, 0, 5)
        assert server.requests == []
        with_judge = f"{{base_url: '{server.url}', model: m}}"
        row = run(with_judge)
        assert (row["generated"], row["rescored"], row["unparsed"], row["score"]) == (0, 5, 4, 0.2)
        assert len(server.requests) == 5  # each cached prediction judged once
        row = run(with_judge)  # the rescored records were kept: nothing to judge again
        assert (row["rescored"], row["score"], len(server.requests)) == (0, 0.2, 5)
        row = run(f"{{base_url: '{server.url}', model: other}}")
        assert (row["rescored"], len(server.requests)) == (5, 10)
        row = run(judge=None)
        assert (row["rescored"], row["score"], len(server.requests)) == (5, 0.0, 10)
    finally:
        server.close()
    assert generator.generated == 5
    path = out / "predictions/a/mathvista_testmini.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 5 * 4  # written once, then appended by each of the three rescorings
    assert all({"score", "parsed", "scorer"} <= set(r) for r in records)


def test_judge_unreachable_names_the_endpoint(samples):
    task = MathVistaTask(judge=Judge("http://127.0.0.1:9/v1", "m", timeout_s=2))
    with pytest.raises(RuntimeError, match=r"127.0.0.1:9/v1/chat/completions"):
        task.score("no idea", samples["2"])


def test_judge_set_in_the_eval_yaml(tmp_path):
    from data.configio import ConfigError
    from eval.runner import run_key

    def config(task_entry: str) -> EvalConfig:
        return load_config(EvalConfig, None, ["checkpoints=[{name: a, path: b}]", f"tasks=[{task_entry}]"])

    cfg = config("{name: mathvista_testmini, data: x, judge: {base_url: 'https://j/v1', model: m, "
                 "api_key_env: K}}")
    spec = cfg.tasks[0]
    assert get_task(spec.name, spec).judge == Judge("https://j/v1", "m", api_key_env="K")
    # The judge only extracts answers from predictions: changing it keeps the prediction cache.
    plain = config("{name: mathvista_testmini, data: x}")
    assert run_key(cfg, cfg.checkpoints[0], spec) == run_key(plain, plain.checkpoints[0], plain.tasks[0])

    with pytest.raises(ConfigError, match=r"judge: .*'url'.*keys: base_url, model"):
        config("{name: mathvista_testmini, data: x, judge: {url: 'http://j', model: m}}")
    with pytest.raises(ConfigError, match=r"tasks.docvqa_val.judge: this task scores without a judge"):
        config("{name: docvqa_val, data: x, judge: {base_url: 'http://j', model: m}}")
