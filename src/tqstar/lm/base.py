"""The language-model protocol every backend implements.

The protocol is *stateless*: token-id sequences in, numbers or continuations out, so that a remote server
can implement it. Backends may cache internally (the ``transformers`` backend keeps the KV cache of the
sequences it saw last and reuses the longest matching prefix), but a call's result never depends on what
was called before.

The decoder needs two calls: :meth:`LanguageModel.top_logprobs` (the k most likely next tokens and
their log-probabilities, normalised over the full vocabulary; with ``tail_temperature`` also the sums of p^{1/T}
over the rest, where the backend has them) and :meth:`LanguageModel.rollout` (continuations); no-truncation
decoding (:mod:`tqstar.tail`) also draws tokens outside the top k with :meth:`LanguageModel.sample_outside`.
Estimators that need likelihood ratios (soft values, ``tq-soft``; emulated fine-tuning, ``eft``) also call
:meth:`LanguageModel.score_continuations` (log ρ(y | prefix) of *given* continuations), whose correct, slow
default asks for the whole vocabulary at every position; backends override it.
That is what a serving engine's completions API gives (``logprobs: k``), so a remote server is a backend like
any other (:mod:`tqstar.lm.remote`). A local backend that has the whole next-token distribution derives from
:class:`FullVocabLM` and implements :meth:`FullVocabLM.next_logprobs` (``(B, V)``); its ``top_logprobs`` and a
correct, slow default ``rollout`` (which it overrides for speed) come from there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError, PromptTooLongError, preview
from ..randomness import sample_tokens, uniforms
from ..text import LocalDecoding

TokenIds = Sequence[int]
#: A prompt: a str (one user turn) or chat messages ``[{"role": "system"|"user"|"assistant", "content": str}]``.
Prompt = str | Sequence[Mapping[str, str]]
#: The roles a chat message may have.
ROLES = ("system", "user", "assistant")
#: How a chat prompt's ids end (the chat template's switches): ``auto`` continues a final assistant message (a
#: prefill) and otherwise opens the assistant's turn; ``assistant`` always opens a new assistant turn
#: (``add_generation_prompt``); ``continue`` continues the final assistant message (``continue_final_message``);
#: ``none`` ends after the last message. A str prompt (one user turn) always opens the assistant's turn.
Ending = Literal["auto", "assistant", "continue", "none"]


@dataclass
class StepOutput:
    """Next-token log-probabilities for a batch of sequences.

    Attributes:
        logprobs: ``(B, V)`` float32 log-probabilities, normalised over the full vocabulary.
        forward_tokens: per sequence, how many tokens the backend ran through the model for it.
    """

    logprobs: torch.Tensor
    forward_tokens: list[int]


@dataclass
class TailMass:
    """What lies outside the top k (the *tail* 𝒯) of p^{1/T}, for a batch of sequences.

    Attributes:
        temperature: T.
        log_mass: ``(B,)`` log S_T = log Σ_{z∈𝒯} p(z)^{1/T} (at T = 1 the tail's probability; −inf: an empty tail).
        mean_logprob: ``(B,)`` Σ_{z∈𝒯} p(z)^{1/T}·log p(z) / S_T, the mean log π of the tail under its tempered shape
            (what the exact KL needs at T ≠ 1); ``None`` where only T = 1 is known (it is not needed there).
    """

    temperature: float
    log_mass: torch.Tensor
    mean_logprob: torch.Tensor | None = None


@dataclass
class TopLogprobs:
    """The k most likely next tokens for a batch of sequences.

    Attributes:
        logprobs: ``(B, k)`` float32 log π(token | seq), normalised over the full vocabulary, descending.
        token_ids: ``(B, k)`` int64, the tokens of ``logprobs``.
        forward_tokens: per sequence, how many tokens the backend ran through the model for it.
        tail: the rest of the vocabulary, when the caller asked for it at a temperature (``tail_temperature``) and
            the backend has the full distribution; :meth:`tail_mass` gives it, with a default at T = 1.
    """

    logprobs: torch.Tensor
    token_ids: torch.Tensor
    forward_tokens: list[int]
    tail: TailMass | None = None

    def tail_mass(self, temperature: float = 1.0) -> TailMass:
        """The tail of p^{1/T} outside these k tokens: the backend's own sums when it computed them at T, else (T = 1
        only) from the k log-probs alone, log p(𝒯) = log(1 − Σ_k p) — exact, since they are normalised over the full
        vocabulary (a top k whose rounding sums to ≥ 1 leaves an empty tail)."""
        if self.tail is not None and self.tail.temperature == temperature:
            return self.tail
        if temperature != 1:
            raise ConfigError(f"the tail of the top {self.logprobs.shape[-1]} at temperature {temperature:g} needs the"
                              " model's full distribution; use a local model, or temperature 1", param="temperature")
        return TailMass(1.0, log1mexp(torch.logsumexp(self.logprobs.double(), dim=-1)))


@dataclass
class RolloutOutput:
    """Continuations of a batch of prefixes.

    Attributes:
        tokens: per prefix, the generated token ids (ending with an EOS id if one was produced).
        forward_tokens: per prefix, how many tokens the backend ran through the model for it.
        logprobs: per prefix, log π(token | prefix, earlier tokens) of every generated token under the model's
            *untempered* distribution (so at temperature 1 it is the sampling distribution's), or ``None`` when the
            backend does not return them (callers then use :meth:`LanguageModel.score_continuations`).
    """

    tokens: list[list[int]]
    forward_tokens: list[int]
    logprobs: list[list[float]] | None = None


@dataclass
class ContinuationScores:
    """Log-likelihoods of given continuations.

    Attributes:
        logprobs: per continuation, log π(y_j | prefix, y_<j) of each of its tokens (float, full-vocabulary
            normalisation); empty for an empty continuation.
        forward_tokens: per continuation, how many tokens the backend ran through the model for it.
    """

    logprobs: list[list[float]]
    forward_tokens: list[int]

    @property
    def sums(self) -> list[float]:
        """log π(y | prefix) = Σ_j log π(y_j | prefix, y_<j) per continuation (0 for an empty one)."""
        return [float(sum(lps)) for lps in self.logprobs]


class LanguageModel(ABC):
    """A causal language model seen as token ids in, next-token log-probs or continuations out.

    Attributes a backend sets: ``name`` (for messages), ``vocab_size`` (``None`` when a remote server does not
    tell), ``eos_token_ids``, ``max_context`` (``None`` when unbounded), ``thread_safe`` (several batches may
    call it at once from different threads: true of a remote server, not of a local model's cache) and
    ``local_decoding`` (a :class:`~tqstar.text.LocalDecoding` when :meth:`decode` of new tokens needs only a few
    tokens before them, so a growing response is decoded at the cost of its new tokens:
    :class:`~tqstar.text.ResponseText`; ``None`` decodes it whole).
    """

    name: str
    vocab_size: int | None
    eos_token_ids: frozenset[int]
    max_context: int | None = None
    thread_safe: bool = False
    local_decoding: LocalDecoding | None = None

    # ---- text <-> ids -----------------------------------------------------------------------------------
    @abstractmethod
    def encode_prompt(self, prompt: Prompt, *, ending: Ending = "auto") -> list[int]:
        """The token ids that start a response to ``prompt`` (chat template, system prompt applied; ``ending``: how
        a chat prompt ends, :data:`Ending`). Message text is encoded as text: control tokens written in it never
        become control tokens unless the backend was built with ``parse_special_tokens=True``."""

    @abstractmethod
    def decode(self, ids: TokenIds) -> str:
        """Response text of ``ids`` (special tokens such as EOS dropped)."""

    def encode_text(self, text: str) -> list[int]:
        """Token ids of response ``text``: no special tokens added, special-token text kept as text (what the text
        bridge feeds a baseline with another tokenizer, :mod:`tqstar.lm.bridge`). Default: the ``tokenizer``."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(f"model {self.name} has no tokenizer to encode response text with; give it one"
                              " (tokenizer: for a served model)")
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    # ---- numbers ----------------------------------------------------------------------------------------
    @abstractmethod
    def top_logprobs(self, seqs: Sequence[TokenIds], k: int, tail_temperature: float | None = None) -> TopLogprobs:
        """The ``k`` most likely next tokens of every sequence in ``seqs`` and their log π (full-vocabulary).

        ``tail_temperature`` T: also the sums of p^{1/T} over the rest of the vocabulary (``TopLogprobs.tail``), where
        the backend has the full distribution; a backend without it leaves ``tail`` ``None`` and
        :meth:`TopLogprobs.tail_mass` derives T = 1 from the k numbers (:meth:`check_tail` refuses other T)."""

    @abstractmethod
    def rollout(
        self,
        prefixes: Sequence[TokenIds],
        max_new_tokens: int | Sequence[int],
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> RolloutOutput:
        """Continue every prefix for up to ``max_new_tokens`` tokens (one budget, or one per prefix) or until EOS.

        ``temperature`` 0 is greedy; otherwise tokens are sampled from softmax(logits / temperature). ``seeds``
        gives one stream seed per prefix (:mod:`tqstar.randomness`): a prefix's continuation depends only on its
        own seed and tokens, never on the other prefixes of the call; ``None`` samples unseeded. Each
        continuation ends with its EOS id if one was produced.
        """

    def score_continuations(self, prefixes: Sequence[TokenIds],
                            continuations: Sequence[TokenIds]) -> ContinuationScores:
        """log π(y_j | prefix, y_<j) for every token of every continuation ``y`` after its prefix (one each).

        The default is correct and slow: it asks :meth:`top_logprobs` for the *whole* vocabulary at every position
        of every continuation. Backends override it (the ``transformers`` backend runs each sequence once from its
        prefix cache; a vLLM server returns prompt log-probs)."""
        assert len(prefixes) == len(continuations), "one continuation per prefix"
        if self.vocab_size is None:
            raise ConfigError(f"{self.name} cannot score given continuations (its vocabulary size is unknown); use a"
                              " backend that implements score_continuations")
        seqs, targets = positions(prefixes, continuations)
        top = self.top_logprobs(seqs, self.vocab_size) if seqs else None
        values = [] if top is None else [float(top.logprobs[i][top.token_ids[i] == t][0])
                                          for i, t in enumerate(targets)]
        return regroup(continuations, values, [] if top is None else top.forward_tokens)

    def next_token_logprobs(self, seqs: Sequence[TokenIds], token_ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """log π(token | seq) ``(B, k)`` of the ``(B, k)`` given next tokens of every sequence, and the forward tokens
        per sequence; by default one-token continuations through :meth:`score_continuations`."""
        k = token_ids.shape[-1]
        scored = self.score_continuations([s for s in seqs for _ in range(k)], [[int(z)] for z in token_ids.flatten()])
        values = torch.tensor([lps[0] for lps in scored.logprobs], dtype=torch.float32).view(len(seqs), k)
        return values, [sum(scored.forward_tokens[b * k:(b + 1) * k]) for b in range(len(seqs))]

    def sample_outside(self, seqs: Sequence[TokenIds], excluded: torch.Tensor, temperature: float,
                       seeds: Sequence[int] | None = None) -> RolloutOutput:
        """One next token per sequence drawn from p^{1/T} restricted to the tokens *not* in its row of ``excluded``
        ``(B, k)`` (the tail of a top k); a sequence whose tail has no mass gets one of its excluded tokens back
        (callers draw only where the tail has mass). ``seeds``: one stream seed per sequence, as for
        :meth:`rollout` (the draw is the inversion of the stream's first uniform). The default is correct and slow:
        it asks :meth:`top_logprobs` for the whole vocabulary."""
        if self.vocab_size is None:
            raise ConfigError(f"{self.name} cannot draw a token outside the top k (its vocabulary size is unknown);"
                              " use a backend that implements sample_outside")
        top = self.top_logprobs(seqs, self.vocab_size)
        full = torch.full((len(seqs), self.vocab_size), float("-inf")).scatter(-1, top.token_ids, top.logprobs)
        return sample_excluding(full, excluded, temperature, seeds, top.forward_tokens)

    def check_tail(self, temperature: float) -> None:
        """Raise :class:`ConfigError` if this model cannot give the tail of its top k at ``temperature`` (the sums of
        p^{1/T} outside it need the full distribution; at T = 1 the top k's own log-probs give it, and a greedy
        decision never uses it). Called by :meth:`tqstar.engine.Engine.check` before decoding with ``tail`` on."""
        if temperature not in (0, 1):
            raise ConfigError(f"`tail` with `temperature` {temperature:g} needs the SFT model's full distribution, which"
                              f" {self.name} does not give (only its top k); use a local SFT model, temperature 1, or"
                              " tail: off", param="tail")

    def check_scoring(self) -> None:
        """Raise :class:`ConfigError` if this model cannot :meth:`score_continuations` (a server without prompt
        log-probs); called by :meth:`tqstar.engine.Engine.check` before decoding with a method that needs them.
        Every local backend can."""
        return None

    def reset_cache(self) -> None:
        """Forget what the backend keeps between calls (results are unaffected, only the work a call does);
        default: nothing is kept."""
        return None

    # ---- checks -----------------------------------------------------------------------------------------
    def check_fits(self, prompt_ids: TokenIds, budget: int, prompt: str) -> None:
        """Raise :class:`PromptTooLongError` if ``prompt_ids`` plus ``budget`` new tokens exceed the context."""
        if self.max_context is not None and len(prompt_ids) + budget > self.max_context:
            raise PromptTooLongError(
                f"prompt {preview(prompt)} is {len(prompt_ids)} tokens and needs {budget} more for generation,"
                f" over the {self.max_context}-token context of {self.name}; shorten it, lower max_new_tokens,"
                " or pass truncate_prompt=True (--truncate-prompt, or `truncate_prompt: true` in a YAML config) to"
                " keep its last tokens"
            )

    def check_k(self, k: int) -> None:
        if self.vocab_size is not None and k > self.vocab_size:
            raise ConfigError(f"`k` must be <= the vocabulary size of {self.name} ({self.vocab_size}), got {k}",
                              param="k")


class FullVocabLM(LanguageModel):
    """A backend that computes the whole next-token distribution (``transformers``, tabular)."""

    @abstractmethod
    def next_logprobs(self, seqs: Sequence[TokenIds]) -> StepOutput:
        """Log π(· | seq) over the full vocabulary for every sequence in ``seqs``."""

    def top_logprobs(self, seqs: Sequence[TokenIds], k: int, tail_temperature: float | None = None) -> TopLogprobs:
        step = self.next_logprobs(seqs)
        values, ids = step.logprobs.topk(k, dim=-1)
        tail = None if tail_temperature is None else tail_sums(step.logprobs, ids, tail_temperature)
        return TopLogprobs(values, ids, step.forward_tokens, tail)

    def sample_outside(self, seqs: Sequence[TokenIds], excluded: torch.Tensor, temperature: float,
                       seeds: Sequence[int] | None = None) -> RolloutOutput:
        """:meth:`LanguageModel.sample_outside` from one :meth:`next_logprobs` call."""
        step = self.next_logprobs(seqs)
        return sample_excluding(step.logprobs, excluded, temperature, seeds, step.forward_tokens)

    def check_tail(self, temperature: float) -> None:
        return None  # the full distribution gives the tail at any temperature

    def next_token_logprobs(self, seqs: Sequence[TokenIds], token_ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """:meth:`LanguageModel.next_token_logprobs` from one :meth:`next_logprobs` call."""
        step = self.next_logprobs(seqs)
        return step.logprobs.gather(-1, token_ids.to(step.logprobs.device)), step.forward_tokens  # (B, k)

    def score_continuations(self, prefixes: Sequence[TokenIds],
                            continuations: Sequence[TokenIds]) -> ContinuationScores:
        """:meth:`LanguageModel.score_continuations` by one :meth:`next_logprobs` batch over every position."""
        assert len(prefixes) == len(continuations), "one continuation per prefix"
        seqs, targets = positions(prefixes, continuations)
        step = self.next_logprobs(seqs) if seqs else None
        chosen = torch.tensor(targets, dtype=torch.long)[:, None]  # (P, 1)
        values = [] if step is None else step.logprobs.gather(-1, chosen).squeeze(-1).tolist()
        return regroup(continuations, values, [] if step is None else step.forward_tokens)

    def rollout(
        self,
        prefixes: Sequence[TokenIds],
        max_new_tokens: int | Sequence[int],
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> RolloutOutput:
        """:meth:`LanguageModel.rollout`, by calling :meth:`next_logprobs` once per token on the whole batch;
        backends override it with something faster that returns the same tokens."""
        seqs = [list(p) for p in prefixes]
        out: list[list[int]] = [[] for _ in seqs]
        logprobs: list[list[float]] = [[] for _ in seqs]
        cost = [0] * len(seqs)
        budgets = rollout_budgets(max_new_tokens, len(seqs))
        draws = rollout_uniforms(seeds, len(seqs), max(budgets, default=0), temperature)  # (R, L) or None
        alive = [i for i in range(len(seqs)) if budgets[i] > 0]
        for t in range(max(budgets, default=0)):
            if not alive:
                break
            step = self.next_logprobs([seqs[i] for i in alive])
            u = None if draws is None else draws[alive, t]
            chosen = sample_tokens(step.logprobs, temperature, u)  # (R,)
            chosen_lp = step.logprobs.gather(-1, chosen[:, None]).squeeze(-1).tolist()  # (R,)
            still = []
            for row, i in enumerate(alive):
                token = int(chosen[row])
                cost[i] += step.forward_tokens[row]
                seqs[i].append(token)
                out[i].append(token)
                logprobs[i].append(chosen_lp[row])
                if token not in self.eos_token_ids and len(out[i]) < budgets[i]:
                    still.append(i)
            alive = still
        return RolloutOutput(tokens=out, forward_tokens=cost, logprobs=logprobs)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) elementwise for x ≤ 0, accurate near 0 and far below it; −inf where x ≥ 0 (an empty rest)."""
    x = x.clamp(max=0.0)
    near = x > -math.log(2.0)
    out = torch.where(near, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return torch.where(x >= 0, torch.full_like(x, float("-inf")), out)


def tail_sums(logprobs: torch.Tensor, top_ids: torch.Tensor, temperature: float) -> TailMass:
    """:class:`TailMass` of the full log-probs ``(B, V)`` outside ``top_ids`` ``(B, k)``, on their device; only
    ``(B,)`` numbers cross to the host."""
    lp = logprobs.double()
    rest = lp.scatter(-1, top_ids.to(lp.device), float("-inf")) / temperature  # (B, V): log p^{1/T}, −inf on the top k
    log_mass = torch.logsumexp(rest, dim=-1)  # (B,)
    weight = torch.exp(rest - log_mass[:, None]).nan_to_num(0.0)  # (B, V): the tempered tail shape; 0 for an empty tail
    mean = torch.where(weight > 0, weight * lp, torch.zeros_like(lp)).sum(dim=-1)  # (B,)
    return TailMass(float(temperature), log_mass.cpu(), mean.cpu())


def sample_excluding(logprobs: torch.Tensor, excluded: torch.Tensor, temperature: float,
                     seeds: Sequence[int] | None, forward_tokens: list[int]) -> RolloutOutput:
    """One token per row of the full log-probs ``(B, V)``, drawn from p^{1/T} outside ``excluded`` ``(B, k)`` by
    inversion of each seed's first uniform (fresh uniforms without seeds); a row whose rest has no mass gets its first
    excluded token. T = 0 takes the most likely token of the rest."""
    excluded = excluded.to(logprobs.device)
    rest = logprobs.float().scatter(-1, excluded, float("-inf"))  # (B, V)
    empty = torch.isinf(rest).all(dim=-1)  # (B,)
    rest = torch.where(empty[:, None], logprobs.float(), rest)
    u = None if seeds is None else torch.from_numpy(uniforms(seeds, 1)[:, 0]).to(logprobs.device)
    tokens = sample_tokens(rest, temperature, u)  # (B,)
    tokens = torch.where(empty, excluded[:, 0], tokens)
    chosen = logprobs.float().gather(-1, tokens[:, None]).squeeze(-1)  # (B,)
    return RolloutOutput([[int(t)] for t in tokens.tolist()], list(forward_tokens), [[float(v)] for v in chosen.tolist()])


def positions(prefixes: Sequence[TokenIds], continuations: Sequence[TokenIds]) -> tuple[list[list[int]], list[int]]:
    """Every scored position of the continuations: the sequence before it and the token there, in order."""
    seqs = [list(p) + list(y[:j]) for p, y in zip(prefixes, continuations) for j in range(len(y))]
    return seqs, [int(t) for y in continuations for t in y]


def regroup(continuations: Sequence[TokenIds], values: Sequence[float], costs: Sequence[int]) -> ContinuationScores:
    """Per-position log-probs and forward tokens (in :func:`positions` order) back into one entry per continuation."""
    out, cost, i = [], [], 0
    for y in continuations:
        out.append(list(values[i:i + len(y)]))
        cost.append(sum(costs[i:i + len(y)]))
        i += len(y)
    return ContinuationScores(out, cost)


def rollout_budgets(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    """One token budget per prefix, from a single budget or a per-prefix sequence."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * count
    budgets = [int(b) for b in max_new_tokens]
    assert len(budgets) == count, "one budget per prefix"
    return budgets


def rollout_uniforms(seeds: Sequence[int] | None, count: int, length: int, temperature: float,
                     device: str | torch.device = "cpu") -> torch.Tensor | None:
    """The ``(count, length)`` uniforms of seeded sampled rollouts (row i: the stream of ``seeds[i]``), on
    ``device`` in one copy; ``None`` for greedy or unseeded rollouts."""
    if temperature == 0 or seeds is None:
        return None
    assert len(seeds) == count, "one seed per prefix"
    return torch.from_numpy(uniforms(seeds, max(length, 1))).to(device)
