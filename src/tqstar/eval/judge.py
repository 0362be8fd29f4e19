"""A pairwise LLM judge over an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama-server, ...).

For each prompt the judge sees two responses — the method's and the reference's — in a random order (seeded),
and answers ``A``, ``B`` or ``TIE``. Verdicts are mapped back to the method's win / tie / loss; an answer that
does not parse is counted as *unparsable* and reported, never silently as a tie. Requests go through
:class:`~tqstar._http.JsonClient` (timeouts, retries with backoff).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._http import JsonClient
from ..errors import ConfigError, ModelServerError, TQStarError

TEMPLATE = """You are comparing two responses to the same user prompt. Judge which response is more helpful,
harmless and honest. Answer with exactly one word: A, B or TIE.

[Prompt]
{prompt}

[Response A]
{a}

[Response B]
{b}

Your answer (A, B or TIE):"""


@dataclass(frozen=True)
class LLMJudge:
    """Pairwise judge. ``api_key_env`` names the environment variable holding the API key (may be unset)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 2
    seed: int = 0
    client: JsonClient = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.base_url or not self.model:
            raise ConfigError("the LLM judge needs both a base URL and a served model name; give --llm-judge-url and"
                              " --llm-judge-model")
        object.__setattr__(self, "client", JsonClient(self.base_url, api_key_env=self.api_key_env,
                                                      timeout=self.timeout, retries=self.retries))

    def ask(self, prompt: str, a: str, b: str) -> str:
        body = {"model": self.model, "temperature": 0.0, "max_tokens": 4,
                "messages": [{"role": "user", "content": TEMPLATE.format(prompt=prompt, a=a, b=b)}]}
        try:
            return self.client.post("/v1/chat/completions", body)["choices"][0]["message"]["content"]
        except (ModelServerError, KeyError, IndexError, TypeError) as exc:
            raise TQStarError(f"LLM judge at {self.base_url} failed ({exc}); check the URL, model name and that the"
                              " server is up") from exc

    def compare(self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        """Win / tie / loss / unparsable shares of ``responses`` against ``references`` (paired by index)."""
        rng = random.Random(self.seed)
        counts = {"win": 0, "tie": 0, "lose": 0, "unparsable": 0}
        for prompt, mine, ref in zip(prompts, responses, references):
            swapped = rng.random() < 0.5
            verdict = parse_verdict(self.ask(prompt, ref, mine) if swapped else self.ask(prompt, mine, ref))
            if verdict is None:
                counts["unparsable"] += 1
            elif verdict == "TIE":
                counts["tie"] += 1
            else:
                counts["win" if (verdict == "A") != swapped else "lose"] += 1
        n = max(1, len(prompts))
        return {key: value / n for key, value in counts.items()}


def parse_verdict(answer: str) -> str | None:
    """``A``, ``B`` or ``TIE`` from the judge's answer; ``None`` if it names none or more than one."""
    found = set(re.findall(r"\b(A|B|TIE)\b", answer.upper()))
    return found.pop() if len(found) == 1 else None
