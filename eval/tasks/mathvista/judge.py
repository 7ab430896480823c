"""Optional LLM-judge answer extraction for MathVista, through any OpenAI-compatible endpoint.

MathVista's reference pipeline asks a GPT model to pull the final answer out of free-form
responses. Here that is a fallback only: it runs when a judge is configured *and* the rule-based
extractor found nothing, and the judge's short reply goes through the same rules, so the judge
extracts but never grades. Plain ``urllib.request`` keeps it free of new dependencies.

Configure it in the eval YAML, on the task::

    tasks:
      - name: mathvista_testmini
        data: /data/MathVista
        judge: {base_url: "http://localhost:8000/v1", model: Qwen3-32B, api_key_env: JUDGE_KEY}

or, when the YAML gives none, with environment variables:
``MATHVISTA_JUDGE_BASE_URL`` (e.g. ``http://localhost:8000/v1``; ``/chat/completions`` is
appended), ``MATHVISTA_JUDGE_MODEL`` and, optionally, ``MATHVISTA_JUDGE_API_KEY_ENV`` (the
name of the variable holding the key, default ``OPENAI_API_KEY``; no key sends no header).
"""

from __future__ import annotations

import functools
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

INSTRUCTION = (
    "Read a model's response to a math question about an image and write only the final "
    "answer it gives: for a multiple-choice question the option letter, otherwise the number, "
    "list or short text, without units or explanation. If the response gives no final answer, "
    "write NONE.")


@dataclass(frozen=True)
class Judge:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_tokens: int = 32

    def prompt(self, question: str, choices: list[str] | None, response: str) -> str:
        lines = [INSTRUCTION, "", f"Question: {question}"]
        if choices:
            lines += [f"({chr(65 + i)}) {c}" for i, c in enumerate(choices)]
        return "\n".join(lines + ["", f"Response: {response}", "", "Final answer:"])

    def extract(self, question: str, choices: list[str] | None, response: str) -> str | None:
        """The judge's extracted answer, or None when it says there is none."""
        reply = _complete(self, self.prompt(question, choices, response)).strip()
        return None if not reply or reply.upper().strip(" .") == "NONE" else reply

    def complete(self, prompt: str) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise RuntimeError(f"MathVista judge {url}: HTTP {e.code} {detail!r}; check the base "
                               f"URL, model {self.model!r} and the key in ${self.api_key_env}") from None
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise RuntimeError(f"MathVista judge {url}: {e}; is the endpoint up and "
                               f"OpenAI-compatible? (unset MATHVISTA_JUDGE_BASE_URL to use "
                               f"rule-based extraction only)") from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"MathVista judge {url}: no choices[0].message.content in the "
                               f"reply {str(payload)[:300]!r}") from None


@functools.lru_cache(maxsize=65536)
def _complete(judge: Judge, prompt: str) -> str:
    """Cached: the runner scores each prediction again when it summarises a run."""
    return judge.complete(prompt)


def judge_from_env() -> Judge | None:
    base_url = os.environ.get("MATHVISTA_JUDGE_BASE_URL")
    if not base_url:
        return None
    model = os.environ.get("MATHVISTA_JUDGE_MODEL")
    if not model:
        raise ValueError("MATHVISTA_JUDGE_BASE_URL is set but MATHVISTA_JUDGE_MODEL is not; "
                         "set the judge's model name (or unset the URL)")
    return Judge(base_url, model, os.environ.get("MATHVISTA_JUDGE_API_KEY_ENV", "OPENAI_API_KEY"))
