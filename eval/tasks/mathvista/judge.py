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

The key goes to the configured address only. ``base_url`` must be https, except on this machine
(localhost, 127.0.0.1, ::1), where a local server commonly speaks plain http: anywhere else the
key and the model's answers would cross the network in clear text. A redirect is never
followed (urllib would follow it with the ``Authorization`` header, to any host); it is an
error that names where the endpoint points, so the user can set ``base_url`` to it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

INSTRUCTION = (
    "Read a model's response to a math question about an image and write only the final "
    "answer it gives: for a multiple-choice question the option letter, otherwise the number, "
    "list or short text, without units or explanation. If the response gives no final answer, "
    "write NONE.")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # plain http is allowed to these only


def check_base_url(url: str) -> None:
    """Raise a ValueError (naming ``judge.base_url``) unless ``url`` is https, or http to this
    machine."""
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"judge.base_url {url!r}: expected an http(s) URL, e.g. "
                         f"https://judge.example.com/v1 or http://localhost:8000/v1")
    if parts.scheme == "http" and parts.hostname.lower() not in LOCAL_HOSTS:
        raise ValueError(f"judge.base_url {url!r}: plain http would send the API key and the "
                         f"model's answers unencrypted to {parts.hostname}; use https:// (plain "
                         f"http is accepted only for {', '.join(LOCAL_HOSTS)})")


class Redirected(Exception):
    """The endpoint answered with a redirect, which is not followed (see the module docstring)."""

    def __init__(self, code: int, location: str):
        super().__init__(code, location)
        self.code, self.location = code, location


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        raise Redirected(code, newurl)


OPENER = urllib.request.build_opener(RefuseRedirects())


@dataclass(frozen=True)
class Judge:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_tokens: int = 32

    def __post_init__(self):
        check_base_url(self.base_url)

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
            with OPENER.open(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode())
        except Redirected as e:
            raise RuntimeError(f"MathVista judge {url}: the endpoint answered with a redirect (HTTP "
                               f"{e.code}) to {e.location}; it is not followed, so the key in "
                               f"${self.api_key_env} goes nowhere else: set the task's "
                               f"judge.base_url to the address that serves /chat/completions") from None
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
