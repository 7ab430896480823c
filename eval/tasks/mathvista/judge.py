"""Optional LLM-judge answer extraction for MathVista, through any OpenAI-compatible endpoint.

MathVista's reference pipeline asks a GPT model to pull the final answer out of free-form
responses. Here that is a fallback only: it runs when a judge is configured *and* the rule-based
extractor found nothing, and the judge's short reply goes through the same rules, so the judge
extracts but never grades. Plain ``urllib.request`` keeps it free of new dependencies.

Configure it in the eval YAML, on the task, and only there, so that the config says how a
run was scored::

    tasks:
      - name: mathvista_testmini
        data: /data/MathVista
        judge: {base_url: "http://localhost:8000/v1", model: Qwen3-32B, api_key_env: JUDGE_KEY}

``base_url`` gets ``/chat/completions`` appended; ``api_key_env`` names the variable holding the
key (default ``OPENAI_API_KEY``; no key sends no header), so the key itself stays out of the
config. The runner scores each prediction once and stores the score with a fingerprint of the
judge (``MathVistaTask.scoring_settings``), so there is no cache of judge replies here.
"""

from __future__ import annotations

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
        reply = self.complete(self.prompt(question, choices, response)).strip()
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
                               f"OpenAI-compatible? (remove the task's judge: from the eval "
                               f"config to use rule-based extraction only)") from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"MathVista judge {url}: no choices[0].message.content in the "
                               f"reply {str(payload)[:300]!r}") from None
