"""The remote backend: a model behind an OpenAI-compatible ``/v1/completions`` server (vLLM, llama.cpp's
``llama-server``, ...). Spec form: ``openai:<base_url>#<served_model_name>``, e.g. ``openai:http://gpu1:8000#sft``.

How the protocol maps onto the API (prompts always go out as **token ids**, so the server sees exactly the
sequences the decoder built; the server's own prefix cache plays the part of the local KV cache):

* :meth:`RemoteLM.top_logprobs`: one request for the whole batch (``prompt`` = a list of token-id lists),
  ``max_tokens: 1``, ``temperature: 0``, ``logprobs: k``. Both response shapes in the wild are read: the legacy
  ``logprobs.top_logprobs`` dictionaries (vLLM; ``return_tokens_as_token_ids`` makes the keys ``token_id:N``)
  and the chat-style ``logprobs.content[].top_logprobs`` with ``id`` (llama-server).
* :meth:`RemoteLM.rollout`: the k×N prefixes of a step as one batched request (split into ``max_batch``-sized
  requests sent concurrently), ``max_tokens``, ``temperature`` and, for seeded sampling, one request per prefix
  seed — except that copies of one prefix whose seeds run consecutively (s, s + 1, …: the k sampled blocks of a
  blockwise decision, :func:`~tqstar.randomness.block_seeds`) go as *one* request with ``n`` and ``seed`` s, because
  vLLM (``ParentRequest._get_child_sampling_params``) and llama-server (``server_task::add_child``) seed the i-th of
  ``n`` samples with seed + i: each sample is still the one its own seed gives alone, and the prompt is sent and
  prefilled once (llama-server: at most its slot count, ``/props`` ``total_slots``). The generated token ids come
  back in the logprobs. A choice that finished with ``stop`` ended at EOS; when the server leaves the EOS token out of
  its tokens (llama-server does), it is appended, so a continuation ends with its EOS id as locally.

* :meth:`RemoteLM.score_continuations`: vLLM's ``prompt_logprobs: 0`` on ``prefix + y`` (``max_tokens: 1``) gives the
  log-prob of every prompt token; the continuation's are read off. llama-server has no prompt log-probs: it is
  refused by :meth:`RemoteLM.check_scoring` (``Engine.check``, before decoding) for the methods that need them.
  Rollouts also return the server's log-probs of their sampled tokens (vLLM: the model's own, at temperature 1 those
  of the sampling distribution), so ``tq-soft`` does not score the baseline's rollouts a second time; a
  continuation whose EOS the server left out has none, and the batch's are then scored.

**KL without the full vocabulary.** A server returns only the top k of the next-token distribution, but both
engines compute those log-probabilities with a log-softmax over the *whole* vocabulary before keeping k. The
decoder needs nothing else: with ``tail: off`` π_dec lives on the k candidates, so KL(π_dec ‖ π_sft) = Σ_z
π_dec(z)·(log π_dec(z) − log π_sft(z)) and the bound's log(1/π_sft(top-k)) use only the k returned numbers; with the
tail kept (:mod:`tqstar.tail`, temperature 1) the tail's mass is log(1 − Σ_k π_sft), and its KL term needs nothing
more — both exactly as with the local backend (up to the server's numerics). Tail tokens come from
:meth:`RemoteLM.sample_outside`: one-token requests with ``logit_bias`` −100 on the row's k candidates and its seed
(vLLM and llama-server both take ``{"<token id>": bias}``). A temperature other than 1 with the tail needs the sums
of π_sft^{1/T} over the whole vocabulary, which no server returns: refused (:meth:`RemoteLM.check_tail`).

Accounting: a server does not say per request how much of a prompt its prefix cache saved, so ``forward_tokens``
counts the tokens sent plus the tokens generated (an upper bound on the model's work); :meth:`RemoteLM.stats`
adds the server's own prefix-cache hit rate where it exposes one (vLLM's ``/metrics``).

Tokenizer: a local tokenizer directory (``tokenizer=``, the served model's own files) when given; it is checked
against the server's ``/tokenize`` and ``/detokenize`` at start-up and a disagreement is an error. Without one,
text goes through the server's ``/tokenize`` / ``/detokenize`` (and chat formatting through the server: vLLM's
``/tokenize`` with ``messages``, llama-server's ``/apply-template``), and the EOS ids must be given
(``eos_token_ids``) or found in llama-server's ``/props``.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .._http import JsonClient
from ..errors import (
    ConfigError,
    ModelLoadError,
    ModelServerError,
    ServerRejectedError,
    VocabularyMismatchError,
)
from ..text import local_decoding
from .base import (
    ContinuationScores,
    Ending,
    LanguageModel,
    Prompt,
    RolloutOutput,
    TokenIds,
    TopLogprobs,
    rollout_budgets,
)
from .chat import chat_messages, encode_around, encode_with_tokenizer, placeholders, template_options
from .loading import eos_ids

SCHEME = "openai:"
# Text the start-up check tokenizes on both sides: words, digits, punctuation, accents, CJK, emoji, whitespace.
_PROBE_TEXT = "Hello world! 1234 tokens: naïve café, 東京, 🙂 — tabs\tand  spaces.\nNew line."
_TOKEN_ID_KEY = re.compile(r"^token_id:(-?\d+)$")
_LOGPROB_FLAGS = {"vllm": "--max-logprobs"}


def parse_spec(spec: str) -> tuple[str, str]:
    """``openai:<base_url>#<served_name>`` → (base_url, served_name); :class:`ConfigError` naming the form."""
    rest = spec[len(SCHEME):] if spec.startswith(SCHEME) else spec
    url, _, served = rest.partition("#")
    if not url.startswith(("http://", "https://")) or not served:
        raise ConfigError(f"remote model {spec!r} must look like openai:<base_url>#<served_model_name>, e.g."
                          " openai:http://127.0.0.1:8000#smollm2")
    return url, served


def is_remote_spec(path: str) -> bool:
    return path.startswith(SCHEME)


class RemoteLM(LanguageModel):
    """A model served by an OpenAI-compatible completions server, behind the :class:`LanguageModel` protocol.

    Args:
        base_url: the server (``http://host:port``; a trailing ``/v1`` is accepted).
        model: the served model name (vLLM's ``--served-model-name``).
        tokenizer: a local tokenizer directory (recommended) or a loaded tokenizer; ``None`` uses the server's.
        chat_template / system_prompt / parse_special_tokens: prompt formatting, as for
            :class:`~tqstar.lm.hf.TransformersLM`.
        eos_token_ids: EOS ids when neither the local tokenizer nor the server tells them.
        api_key_env, timeout, retries, backoff: see :class:`~tqstar._http.JsonClient`.
        concurrency: requests in flight at once from this model (over all threads).
        max_batch: prompts per request; larger batches are split into concurrent requests.
        name: shown in messages.

    The constructor contacts the server: it fails with :class:`ModelServerError` naming the URL when the server
    does not answer, and with :class:`VocabularyMismatchError` when its tokenizer disagrees with the local one.
    """

    thread_safe = True

    def __init__(self, base_url: str, model: str, *, tokenizer: Any = None, chat_template: bool | str = True,
                 system_prompt: str | None = None, eos_token_ids: Sequence[int] | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0, retries: int = 4, backoff: float = 0.5,
                 concurrency: int = 8, max_batch: int = 256, name: str | None = None,
                 parse_special_tokens: bool = False) -> None:
        if max_batch < 1:
            raise ConfigError(f"`max_batch` must be >= 1, got {max_batch}", param="max_batch")
        self.client = JsonClient(base_url, api_key_env=api_key_env, timeout=timeout, retries=retries,
                                 backoff=backoff, max_in_flight=concurrency)
        self.base_url, self.model = self.client.root, model
        self.name = name or f"{model} at {self.client.root}"
        self.chat_template, self.system_prompt = chat_template, system_prompt
        self.parse_special_tokens = parse_special_tokens
        self.max_batch = max_batch
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tqstar-http")
        self._lock = threading.Lock()
        self.prompt_tokens_sent = 0
        self.completion_tokens = 0
        self.flavor, self.max_context, server_vocab = self._connect()
        self.max_n = self._max_n()
        if isinstance(tokenizer, (str, Path)):
            tokenizer = _load_tokenizer(Path(tokenizer))
        self.tokenizer = tokenizer
        self.local_decoding = local_decoding(tokenizer) if tokenizer is not None else None  # EOS ids dropped first
        self.vocab_size = len(tokenizer) if tokenizer is not None else server_vocab
        ids = set(eos_token_ids or [])
        if tokenizer is not None:
            ids |= _local_eos(tokenizer)
            self.check_tokenizer()
        elif not ids:
            ids = self._server_eos()
        if not ids:
            raise ModelLoadError(f"cannot tell the EOS token ids of {self.name}; give a local tokenizer directory"
                                 " (tokenizer:) or eos_token_ids")
        self.eos_token_ids = frozenset(ids)

    # ---- start-up ---------------------------------------------------------------------------------------
    def _connect(self) -> tuple[str, int | None, int | None]:
        """Check the server answers and serves ``model``; returns (flavor, max context, vocabulary size)."""
        try:
            listing = self.client.get("/v1/models", retries=min(self.client.retries, 2))
        except ServerRejectedError as exc:
            raise ModelServerError(f"server {self.base_url} has no /v1/models (HTTP {exc.status}); give the address of an"
                                   " OpenAI-compatible server") from exc
        entries = listing.get("data", []) if isinstance(listing, dict) else []
        served = [str(e.get("id")) for e in entries]
        entry = next((e for e in entries if e.get("id") == self.model), None)
        if entry is None and not (len(entries) == 1 and "llama" in str(entries[0].get("owned_by", ""))):
            raise ConfigError(f"server {self.base_url} does not serve a model named {self.model!r} (it serves"
                              f" {', '.join(served) or 'nothing'}); fix the name after '#'")
        entry = entry or entries[0]
        owner = str(entry.get("owned_by", ""))
        flavor = "vllm" if owner == "vllm" else "llama.cpp" if "llama" in owner else "openai"
        meta = entry.get("meta") or {}
        context = entry.get("max_model_len") or None
        if flavor == "llama.cpp":
            props = self._get_optional("/props") or {}
            settings = props.get("default_generation_settings") or {}
            context = settings.get("n_ctx") or meta.get("n_ctx_train") or None
        return flavor, context, meta.get("n_vocab") or None

    def _max_n(self) -> int:
        """How many seeded samples of one prompt a request may ask for (``n``, the i-th seeded seed + i): vLLM any,
        llama-server its slots, an unknown server 1 (its ``n`` and ``seed`` may not combine that way)."""
        if self.flavor == "vllm":
            return 1 << 16
        if self.flavor == "llama.cpp":
            slots = (self._get_optional("/props") or {}).get("total_slots")
            return int(slots) if isinstance(slots, int) and slots > 0 else 1
        return 1

    def _get_optional(self, path: str, *, raw: bool = False) -> Any:
        """GET an endpoint not every server has (``/props``, ``/metrics``); ``None`` when it is missing."""
        try:
            return self.client.get(path, raw=raw, retries=0)
        except ModelServerError:
            return None

    def _server_eos(self) -> set[int]:
        props = self._get_optional("/props") or {}
        token = props.get("eos_token")
        if isinstance(token, str) and token:
            ids = self._server_tokenize(token, special=True)
            return set(ids[:1]) if len(ids) == 1 else set()
        return set()

    def check_tokenizer(self) -> None:
        """Raise :class:`VocabularyMismatchError` if the server's tokenizer disagrees with the local one."""
        local = list(self.tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"])
        remote = self._server_tokenize(_PROBE_TEXT)
        if local != remote:
            first = next((i for i, (a, b) in enumerate(zip(local, remote)) if a != b), min(len(local), len(remote)))
            raise VocabularyMismatchError(
                f"the tokenizer of {self.name} disagrees with the local tokenizer (probe text token {first}: server"
                f" {remote[first:first + 3]}, local {local[first:first + 3]}); give the served model's own tokenizer"
                " directory, or none to use the server's")
        rng = random.Random(0)
        sample = sorted(rng.sample(range(len(self.tokenizer)), min(64, len(self.tokenizer))))
        served_texts = self._pool.map(lambda token: self._server_detokenize([token]), sample)
        for token, served in zip(sample, served_texts):
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            if served != text and not (served.strip() == text.strip() and text.strip()):
                raise VocabularyMismatchError(
                    f"token {token} of {self.name} is {served!r} on the server but {text!r} locally; give the served"
                    " model's own tokenizer directory, or none to use the server's")

    # ---- text <-> ids -----------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, *, ending: Ending = "auto") -> list[int]:
        """``prompt``: a str or chat messages, encoded as for :class:`~tqstar.lm.hf.TransformersLM` (message text
        never becomes control tokens unless ``parse_special_tokens``). Without a local tokenizer the server
        encodes: llama-server can tokenize text without control tokens; vLLM cannot, so it needs the opt-in."""
        if self.tokenizer is not None:
            return encode_with_tokenizer(self.tokenizer, prompt, self.chat_template, self.system_prompt, self.name,
                                         self.parse_special_tokens, ending)
        messages = chat_messages(prompt, self.system_prompt, self.name)
        options = template_options(messages, ending)
        if self.flavor != "llama.cpp" and not self.parse_special_tokens:
            raise ConfigError(f"{self.name} tokenizes prompts on the server, which reads control tokens such as"
                              " <|im_end|> in prompt text; give the served model's tokenizer directory (tokenizer:)"
                              " or set parse_special_tokens: true to accept that")
        if not self.chat_template:
            ids = self._server_tokenize("\n\n".join(m["content"] for m in messages), add_special=True,
                                        special=self.parse_special_tokens)
        elif isinstance(self.chat_template, str):
            raise ConfigError(f"a chat_template string needs a local tokenizer for {self.name}; give tokenizer:")
        elif self.flavor == "llama.cpp":
            if options != template_options(messages):  # /apply-template has no switches: it ends as "auto" does
                raise ConfigError(f"{self.name} renders its chat template on llama-server, which cannot end a prompt"
                                  f" as {ending!r}; give the served model's tokenizer directory (tokenizer:)")
            ids = self._server_chat_ids(messages)
        else:
            ids = self._tokens(self.client.post("/tokenize", {"model": self.model, "messages": messages,
                                                               **options, "add_special_tokens": False}))
        if not ids:
            raise ConfigError(f"prompt {str(prompt)[:80]!r} encodes to no tokens for {self.name}; give a non-empty"
                              " prompt")
        return ids

    def _server_chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """llama-server: the template's text with its control tokens; a message content that spells control tokens
        is rendered as a placeholder and tokenized as plain text (``parse_special: false``)."""
        spelt = [not self.parse_special_tokens and self._server_tokenize(m["content"], special=True)
                 != self._server_tokenize(m["content"]) for m in messages]
        marks = placeholders(len(messages))
        shown = [{**m, "content": mark if s else m["content"]} for m, mark, s in zip(messages, marks, spelt)]
        text = self.client.post("/apply-template", {"messages": shown})["prompt"]
        if not any(spelt):
            return self._server_tokenize(text, special=True)
        contents = {mark: m["content"] for m, mark, s in zip(messages, marks, spelt) if s}
        return encode_around(text, contents, text=self._server_tokenize,
                             markup=lambda piece: self._server_tokenize(piece, special=True))

    def encode_text(self, text: str) -> list[int]:
        """The local tokenizer's ids of ``text`` when given, else the server's (no special tokens added or parsed)."""
        return super().encode_text(text) if self.tokenizer is not None else self._server_tokenize(text)

    def decode(self, ids: TokenIds) -> str:
        ids = [int(i) for i in ids if int(i) not in self.eos_token_ids]
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self._server_detokenize(ids) if ids else ""

    def _server_tokenize(self, text: str, *, add_special: bool = False, special: bool = False) -> list[int]:
        body = {"model": self.model, "prompt": text, "content": text, "add_special_tokens": add_special,
                "add_special": add_special, "parse_special": special}
        return self._tokens(self.client.post("/tokenize", body))

    def _server_detokenize(self, ids: list[int]) -> str:
        answer = self.client.post("/detokenize", {"model": self.model, "tokens": ids})
        text = answer.get("prompt", answer.get("content")) if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise ModelServerError(f"server {self.base_url}/detokenize answered {str(answer)[:200]!r}; expected a"
                                   " 'prompt' or 'content' field")
        return text

    def _tokens(self, answer: Any) -> list[int]:
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            raise ModelServerError(f"server {self.base_url}/tokenize answered {str(answer)[:200]!r}; expected 'tokens'")
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    # ---- numbers ----------------------------------------------------------------------------------------
    def top_logprobs(self, seqs: Sequence[TokenIds], k: int, tail_temperature: float | None = None) -> TopLogprobs:
        """The top k of one request; the tail's mass at T = 1 follows from them (:meth:`TopLogprobs.tail_mass`), other
        temperatures are refused (:meth:`check_tail`)."""
        if tail_temperature not in (None, 0, 1):
            self.check_tail(tail_temperature)
        if any(len(s) == 0 for s in seqs):
            raise ConfigError("top_logprobs needs non-empty sequences; every prompt must encode to >= 1 token")
        body = {"max_tokens": 1, "temperature": 0.0, "logprobs": k}
        choices = self._complete([list(map(int, s)) for s in seqs], body)
        values = torch.empty(len(seqs), k)
        ids = torch.empty(len(seqs), k, dtype=torch.long)
        for row, choice in enumerate(choices):
            top = _top_entries(choice, self.base_url)
            if len(top) < k:
                raise ModelServerError(f"server {self.base_url} returned {len(top)} next-token log-probs where k = {k} were"
                                       " asked; lower k or raise the server's limit")
            top = top[:k]
            ids[row] = torch.tensor([t for t, _ in top])
            values[row] = torch.tensor([lp for _, lp in top])
        return TopLogprobs(values, ids, [len(s) for s in seqs])

    def rollout(self, prefixes: Sequence[TokenIds], max_new_tokens: int | Sequence[int], temperature: float = 0.0,
                seeds: Sequence[int] | None = None) -> RolloutOutput:
        budgets = rollout_budgets(max_new_tokens, len(prefixes))
        sampled_seeds = list(seeds) if seeds is not None and temperature > 0 else None
        assert sampled_seeds is None or len(sampled_seeds) == len(prefixes), "one seed per prefix"
        tokens: list[list[int]] = [[] for _ in prefixes]
        logprobs: list[list[float] | None] = [[] for _ in prefixes]
        for budget, seed, rows in self._rollout_requests(prefixes, budgets, sampled_seeds):
            body: dict[str, Any] = {"max_tokens": budget, "temperature": float(temperature), "logprobs": 1}
            if seed is not None:
                body["seed"] = seed
            if seed is not None and len(rows) > 1:  # copies of one prefix, seeds seed, seed + 1, ...
                choices = self._complete([list(map(int, prefixes[rows[0]]))], {**body, "n": len(rows)})
            else:
                choices = self._complete([list(map(int, prefixes[i])) for i in rows], body)
            for i, choice in zip(rows, choices):
                out = _generated_ids(choice, self.base_url)[:budgets[i]]
                lps = _generated_logprobs(choice)
                logprobs[i] = lps[:len(out)] if lps is not None and len(lps) >= len(out) else None
                if choice.get("finish_reason") == "stop" and (not out or out[-1] not in self.eos_token_ids):
                    if len(out) < budgets[i]:
                        out.append(min(self.eos_token_ids))  # the server stopped at EOS but left it out
                        logprobs[i] = None  # ... and its log-prob
                tokens[i] = out
        with self._lock:
            self.completion_tokens += sum(len(t) for t in tokens)
        complete = all(lps is not None for lps in logprobs)
        return RolloutOutput(tokens, [len(p) + len(t) for p, t in zip(prefixes, tokens)],
                             [list(lps or []) for lps in logprobs] if complete else None)

    def sample_outside(self, seqs: Sequence[TokenIds], excluded: torch.Tensor, temperature: float,
                       seeds: Sequence[int] | None = None) -> RolloutOutput:
        """One-token requests with ``logit_bias`` −100 on each row's ``excluded`` tokens (so they keep e^−100 of
        their weight: nothing, in float32) at ``temperature``, one request per row (its own bias and seed)."""
        def one(i: int) -> dict:
            body: dict[str, Any] = {"max_tokens": 1, "temperature": float(temperature), "logprobs": 1,
                                    "logit_bias": {str(int(z)): -100 for z in excluded[i].tolist()}}
            if seeds is not None:
                body["seed"] = int(seeds[i]) % (2**31)
            return self._request([[int(t) for t in seqs[i]]], body)[0]

        choices = list(self._pool.map(one, range(len(seqs))))
        tokens = []
        for choice in choices:
            out = _generated_ids(choice, self.base_url)[:1]
            if not out and choice.get("finish_reason") == "stop":
                out = [min(self.eos_token_ids)]  # the server drew EOS and left it out
            if not out:
                raise ModelServerError(f"server {self.base_url} returned no token for a one-token request in"
                                       f" {str(choice)[:200]!r}")
            tokens.append(out)
        with self._lock:
            self.completion_tokens += len(tokens)
        return RolloutOutput(tokens, [len(s) + 1 for s in seqs])

    def _rollout_requests(self, prefixes: Sequence[TokenIds], budgets: list[int],
                          seeds: list[int] | None) -> list[tuple[int, int | None, list[int]]]:
        """``(budget, seed, prefix indices)`` per request. Unseeded: one per budget, every prefix a prompt. Seeded:
        a server seeds every prompt of a request alike, so each seed goes in its own request (a prefix's sample
        depends only on its own seed, never on its batch mates) — but copies of one prefix with the same budget
        whose seeds (as sent, mod 2^31) run s, s + 1, … go together as one request for ``n`` samples."""
        live = [i for i, budget in enumerate(budgets) if budget > 0]
        if seeds is None:
            by_budget: dict[int, list[int]] = {}
            for i in live:
                by_budget.setdefault(budgets[i], []).append(i)
            return [(budget, None, rows) for budget, rows in by_budget.items()]
        sent = {i: int(seeds[i]) % (2**31) for i in live}
        copies: dict[tuple[tuple[int, ...], int], list[int]] = {}
        for i in live:
            copies.setdefault((tuple(int(t) for t in prefixes[i]), budgets[i]), []).append(i)
        requests = []
        for (_, budget), rows in copies.items():
            rows = sorted(rows, key=lambda i: sent[i])
            run = [rows[0]]
            for i in rows[1:]:
                if sent[i] == sent[run[-1]] + 1 and len(run) < self.max_n:
                    run.append(i)
                else:
                    requests.append((budget, sent[run[0]], run))
                    run = [i]
            requests.append((budget, sent[run[0]], run))
        return requests

    def score_continuations(self, prefixes: Sequence[TokenIds],
                            continuations: Sequence[TokenIds]) -> ContinuationScores:
        """The server's prompt log-probs of ``prefix + y`` (vLLM's ``prompt_logprobs: 0``: the log-prob of every
        prompt token), read at the continuation's positions; one batched request (split at ``max_batch``)."""
        assert len(prefixes) == len(continuations), "one continuation per prefix"
        self.check_scoring()
        rows = [i for i, y in enumerate(continuations) if len(y) > 0]
        seqs = [[int(t) for t in prefixes[i]] + [int(t) for t in continuations[i]] for i in rows]
        choices = self._complete(seqs, {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}) if rows else []
        values: list[list[float]] = [[] for _ in prefixes]
        cost = [0] * len(prefixes)
        for i, seq, choice in zip(rows, seqs, choices):
            entries = choice.get("prompt_logprobs")
            if not isinstance(entries, list) or len(entries) != len(seq):
                raise ModelServerError(f"server {self.base_url} returned no prompt log-probs for a {len(seq)}-token prompt"
                                       " (prompt_logprobs); score_continuations needs a vLLM server")
            start = len(prefixes[i])
            values[i] = [_prompt_logprob(entries[p], seq[p], self.base_url) for p in range(start, len(seq))]
            cost[i] = len(seq) + 1
        return ContinuationScores(values, cost)

    def check_scoring(self) -> None:
        """llama-server does not return prompt log-probs, so it cannot score given continuations."""
        if self.flavor == "llama.cpp":
            raise ConfigError(f"server {self.base_url} is llama-server, which cannot score given continuations"
                              " (score_continuations needs prompt log-probs, which tq-soft and eft use); serve this"
                              " model with vLLM or load it locally", param="method")

    def check_k(self, k: int) -> None:
        """Ask the server for k next-token log-probs once, so a server limit fails before decoding starts."""
        super().check_k(k)
        self.top_logprobs([self._server_tokenize("Hello")], k)

    # ---- requests ---------------------------------------------------------------------------------------
    def _complete(self, prompts: list[list[int]], extra: dict[str, Any]) -> list[dict]:
        """``/v1/completions`` for ``prompts`` (split into concurrent requests of ``max_batch``): one choice each."""
        chunks = [prompts[i:i + self.max_batch] for i in range(0, len(prompts), self.max_batch)]
        answers = list(self._pool.map(lambda chunk: self._request(chunk, extra), chunks))
        return [choice for answer in answers for choice in answer]

    def _request(self, prompts: list[list[int]], extra: dict[str, Any]) -> list[dict]:
        body = {"model": self.model, "prompt": prompts, "echo": False, "return_tokens_as_token_ids": True, **extra}
        try:
            answer = self.client.post("/v1/completions", body)
        except ServerRejectedError as exc:
            if "logprob" in exc.detail.lower():
                flag = _LOGPROB_FLAGS.get(self.flavor, "its log-probs limit")
                raise ConfigError(f"server {self.base_url} refused logprobs={extra.get('logprobs')} ({exc.detail});"
                                  f" lower k or restart the server with a higher limit ({flag})", param="k",
                                  value=extra.get("logprobs")) from exc
            raise
        choices = answer.get("choices") if isinstance(answer, dict) else None
        expected = len(prompts) * int(extra.get("n", 1))
        if not isinstance(choices, list) or len(choices) != expected:
            raise ModelServerError(f"server {self.base_url} answered {len(choices) if isinstance(choices, list) else 'no'}"
                                   f" choices for {expected} samples of {len(prompts)} prompts; is it an"
                                   " OpenAI-compatible completions server?")
        choices = sorted(choices, key=lambda c: int(c.get("index", 0)))
        with self._lock:
            self.prompt_tokens_sent += sum(len(p) for p in prompts)
        return choices

    def stats(self) -> dict[str, Any]:
        """Requests, retries and tokens this client sent, and the server's prefix-cache counters where it exposes
        them (vLLM's ``/metrics``); for the end-of-run summary."""
        counts = self.client.counts
        out: dict[str, Any] = {"requests": counts.requests, "retries": counts.retries, "failures": counts.failures,
                               "prompt_tokens_sent": self.prompt_tokens_sent,
                               "completion_tokens": self.completion_tokens}
        out.update(prefix_cache_metrics(self._get_optional("/metrics", raw=True) or ""))
        return out


def prefix_cache_metrics(text: str) -> dict[str, float]:
    """Prefix-cache hits and queries (tokens) from a Prometheus ``/metrics`` page (vLLM's names), summed over
    label sets; ``{}`` when the server exposes none."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^vllm:prefix_cache_(hits|queries)(?:_total)?(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line.strip())
        if match:
            key = f"prefix_cache_{match.group(1)}"
            totals[key] = totals.get(key, 0.0) + float(match.group(2))
    if totals.get("prefix_cache_queries"):
        totals["prefix_cache_hit_rate"] = totals.get("prefix_cache_hits", 0.0) / totals["prefix_cache_queries"]
    return totals


def _top_entries(choice: dict, url: str) -> list[tuple[int, float]]:
    """(token id, log-prob) of the first generated position's top log-probs, most likely first."""
    logprobs = choice.get("logprobs") or {}
    content = logprobs.get("content")
    if content:  # chat-style (llama-server)
        entries = [(int(e["id"]), float(e["logprob"])) for e in content[0].get("top_logprobs", []) if "id" in e]
    elif logprobs.get("top_logprobs"):  # legacy (vLLM)
        entries = [(_token_id(key, url), float(value)) for key, value in (logprobs["top_logprobs"][0] or {}).items()]
    else:
        raise ModelServerError(f"server {url} returned no log-probs in {str(choice)[:200]!r}; it must support the"
                               " `logprobs` field of /v1/completions")
    best: dict[int, float] = {}
    for token, value in entries:
        best[token] = max(value, best.get(token, float("-inf")))
    return sorted(best.items(), key=lambda e: (-e[1], e[0]))


def _generated_ids(choice: dict, url: str) -> list[int]:
    """The token ids a choice generated."""
    if isinstance(choice.get("token_ids"), list):
        return [int(t) for t in choice["token_ids"]]
    logprobs = choice.get("logprobs") or {}
    if logprobs.get("content") is not None:
        return [int(e["id"]) for e in logprobs["content"]]
    if logprobs.get("tokens") is not None:
        return [_token_id(t, url) for t in logprobs["tokens"]]
    if not choice.get("text") and choice.get("finish_reason") in ("stop", "length"):
        return []
    raise ModelServerError(f"server {url} returned no generated token ids in {str(choice)[:200]!r}; it must return"
                           " log-probs with token ids")


def _generated_logprobs(choice: dict) -> list[float] | None:
    """The log-probs of a choice's generated tokens, when the server returned them."""
    logprobs = choice.get("logprobs") or {}
    if logprobs.get("content") is not None:
        values = [e.get("logprob") for e in logprobs["content"]]
    else:
        values = logprobs.get("token_logprobs")
    if not isinstance(values, list) or any(not isinstance(v, (int, float)) for v in values):
        return None
    return [float(v) for v in values]


def _prompt_logprob(entry: Any, token: int, url: str) -> float:
    """log π of prompt token ``token`` from one vLLM ``prompt_logprobs`` entry ({token id: {"logprob": ...}})."""
    value = entry.get(str(token), entry.get(f"token_id:{token}")) if isinstance(entry, dict) else None
    if isinstance(value, dict):
        value = value.get("logprob")
    if not isinstance(value, (int, float)):
        raise ModelServerError(f"server {url} returned prompt log-probs without token {token} in {str(entry)[:200]!r}")
    return float(value)


def _token_id(key: str, url: str) -> int:
    match = _TOKEN_ID_KEY.match(str(key))
    if not match:
        raise ModelServerError(f"server {url} returned token {key!r} as text, not as an id; tqstar needs"
                               " return_tokens_as_token_ids (vLLM >= 0.5)")
    return int(match.group(1))


def _load_tokenizer(path: Path):
    if not path.is_dir():
        raise ConfigError(f"tokenizer directory {str(path)!r} does not exist; give the served model's local directory")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _local_eos(tokenizer) -> set[int]:
    gen = None
    path = Path(getattr(tokenizer, "name_or_path", "") or "")
    if (path / "generation_config.json").exists():
        from transformers import GenerationConfig

        gen = GenerationConfig.from_pretrained(str(path))
    return set(eos_ids(gen, tokenizer))
