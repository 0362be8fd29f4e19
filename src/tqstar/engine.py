"""The engine: models + rewards in, :class:`~tqstar.state.Response` objects out, for any method.

``Engine(sft, baseline, reward, baseline_reward).generate(prompts, params)`` checks the method against what
was given (before decoding anything), formats each prompt for each model, decodes in batches and scores the
finished responses with the target reward. A baseline with another tokenizer is bridged through text
(:mod:`tqstar.lm.bridge`), decided here from the two tokenizers. It is three calls anyone can make — a server's scheduler does —
``new_state`` (one row per prompt), ``decoder(params).step/run`` (one token per step over the rows) and
``finish`` (rewards in one call, :class:`Response` objects).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from ._checks import check_int
from ._schema import check_arguments
from .decoder import Decoder, OnStep
from .errors import ConfigError, VocabularyMismatchError, describe, require_type
from .lm.base import Ending, FullVocabLM, LanguageModel
from .lm.bridge import TextBridge
from .methods import NEEDS
from .params import DecodeParams
from .prompts import check_prompt
from .randomness import prompt_key
from .reward import Reward
from .state import Models, PromptState, Response

log = logging.getLogger("tqstar")

#: A prompt: one user turn as a str, or chat messages ``[{"role": ..., "content": ...}, ...]``.
Prompt = str | Sequence[Mapping[str, str]]


class Engine:
    """Decoding-time alignment over one SFT model, an optional baseline and the rewards.

    Args:
        sft: the reference (SFT) model that proposes candidates.
        baseline: the aligned model whose rollouts estimate Q* (``tq-direct``, ``tq-indirect``) or that is
            decoded itself (``baseline``, ``bon`` with ``bon_policy="baseline"``). With the SFT model's vocabulary
            it extends the SFT token ids (and must end at the same EOS ids); with another tokenizer it works on text
            through the text bridge (:mod:`tqstar.lm.bridge`).
        reward: the target reward.
        baseline_reward: the reward the baseline was aligned to (``tq-indirect``).
        bridge: ``None`` (default) bridges through text exactly when the two vocabularies differ, and says so once
            (a warning on the ``tqstar`` logger); ``True`` bridges a pair that shares its vocabulary too (to measure
            what the bridge costs); ``False`` refuses a pair with different vocabularies
            (:class:`VocabularyMismatchError`).
    """

    def __init__(self, sft: LanguageModel, baseline: LanguageModel | None = None, reward: Reward | None = None,
                 baseline_reward: Reward | None = None, *, bridge: bool | None = None) -> None:
        check_arguments(Engine.__init__, {"bridge": bridge})
        for role, model in (("sft", sft), ("baseline", baseline)):
            if model is not None or role == "sft":
                path = repr(model) if isinstance(model, str) else "PATH"
                hint = f"TransformersLM.from_pretrained({path})"
                require_type(model, LanguageModel, role, "a LanguageModel", f"load one with {hint}")
        for role, reward_ in (("reward", reward), ("baseline_reward", baseline_reward)):
            if reward_ is not None:
                fix = (f"wrap a function with CallableReward({reward_.__name__})" if callable(reward_)
                       and hasattr(reward_, "__name__") else
                       f"load one with load_reward({reward_!r})" if isinstance(reward_, str) else
                       "load one with load_reward(SPEC)")
                require_type(reward_, Reward, role, "a Reward or None", fix)
        text_bridge = None
        if baseline is not None:
            same = shares_vocabulary(sft, baseline)
            if bridge or (bridge is None and not same):
                text_bridge = TextBridge(sft, baseline)
                why = "share a vocabulary but bridge=True" if same else "have different tokenizers"
                log.warning(f"SFT model {sft.name} and baseline {baseline.name} {why}: the baseline reads and writes"
                            " text (text bridge, docs/weak-to-strong.md)")
            else:
                check_same_vocabulary(sft, baseline)
                check_same_eos(sft, baseline)
        self.models = Models(sft=sft, baseline=baseline, reward=reward, baseline_reward=baseline_reward,
                             bridge=text_bridge)
        self._checked: set[tuple] = set()  # group keys that passed check()

    def check(self, params: DecodeParams, concurrency: int = 1) -> None:
        """Raise :class:`ConfigError` if ``params`` (and ``concurrency``) cannot run with the models and rewards
        given.

        What the models are asked (``k`` against a served model's log-probs limit is a round trip to its server) is
        asked once per parameter group (:meth:`DecodeParams.group_key`): the server checks every request with it,
        and ``stream``, ``decoder`` and the scheduler call it freely."""
        check_params(params)
        m = self.models
        check_concurrency(concurrency, [lm.name for lm in (m.sft, m.baseline) if lm is not None and not lm.thread_safe])
        key = params.group_key()
        if key not in self._checked:
            self._check_group(params)
            self._checked.add(key)

    def _check_group(self, params: DecodeParams) -> None:
        """:meth:`check`'s questions to the models and rewards, for one parameter group."""
        m = self.models
        flags = {"baseline": "--baseline", "reward": "--reward", "baseline_reward": "--baseline-reward"}
        for what in NEEDS:  # what the method's row needs (tqstar.methods)
            if what in params.needs and getattr(m, what) is None:
                raise ConfigError(f"method {params.method!r} needs a {what.replace('_', ' ')}; give one with"
                                  f" {flags[what]} (`{what}:` in a YAML config, {what}= in Engine)", param="method",
                                  value=params.method)
        # blockwise: k samples, not a top-k of the vocabulary; α·(R_max − R_min) is finite by the numeric envelope
        if params.is_token_level and params.block_len is None:
            m.sft.check_k(params.k)
        if params.samples_tail:
            self._check_tail(params)
        if params.scores_likelihoods:  # tq-soft scores with the SFT model, eft with both: the same token ids
            if m.bridge is not None:
                raise ConfigError(f"method {params.method!r} needs the baseline's and the SFT model's likelihoods of the"
                                  f" same tokens, but baseline {m.baseline.name} has another tokenizer (text bridge);"
                                  " use tq-direct, tq-indirect or cd with this pair, or a baseline that shares the SFT"
                                  " tokenizer", param="method", value=params.method)
            for lm in (m.sft, m.baseline):
                if lm is not None:
                    lm.check_scoring()

    def _check_tail(self, params: DecodeParams) -> None:
        """What the tail of a sampled token-level decision needs of the models (:mod:`tqstar.tail`): its sums at
        ``temperature`` from the SFT model, and for ``rolling`` both full distributions over the SFT vocabulary."""
        m = self.models
        m.sft.check_tail(params.temperature)
        role = params.method_row.rolls
        if params.tail != "rolling" or params.alpha == 0 or role is None:
            return
        roll = m.lm(role)
        if role == "baseline" and m.bridge is not None:
            raise ConfigError(f"`tail` 'rolling' draws the tail token from the baseline's next-token distribution over"
                              f" the SFT vocabulary, which baseline {roll.name} (another tokenizer, text bridge) cannot"
                              " give; use tail: mean or tail: rollout with this pair", param="tail", value=params.tail)
        for lm in dict.fromkeys((m.sft, roll)):
            if not isinstance(lm, FullVocabLM):
                raise ConfigError(f"`tail` 'rolling' needs the full next-token distribution of {lm.name}, which a served"
                                  " model does not give; use tail: mean or tail: rollout, or a local model",
                                  param="tail", value=params.tail)

    def new_state(self, prompt: Prompt, params: DecodeParams, *, truncate_prompt: bool = False, seed: int | None = None,
                  max_new_tokens: int | None = None, stop: Sequence[str] | None = None,
                  trace: bool | None = None, ending: Ending = "auto") -> PromptState:
        """A row for ``prompt`` (a str, or chat messages), encoded for every model the method runs and checked to
        fit their contexts; ``seed``, ``max_new_tokens``, ``stop`` and ``trace`` override ``params`` for this row
        (checked the same way). ``ending``: how a chat prompt ends (:data:`~tqstar.lm.base.Ending`: by default a
        final assistant message is continued, anything else gets the assistant's turn)."""
        check_params(params)
        check_prompt(prompt, "`prompt`")
        check_arguments(Engine.new_state, {"truncate_prompt": truncate_prompt, "ending": ending})
        changes = {name: value for name, value in (("seed", seed), ("max_new_tokens", max_new_tokens),
                                                   ("stop", None if stop is None else tuple(stop)),
                                                   ("trace", trace)) if value is not None}
        row_params = params.replace(**changes) if changes else params
        # every sequence a model sees fits prompt + max_new_tokens: a rollout from [s, z] never runs past what the
        # response has left (tqstar.value.base), so rollout_len adds nothing to the context a row needs
        budget = row_params.max_new_tokens
        text = reward_prompt(prompt)
        ids = {}
        for role in ["sft", "baseline"] if params.uses_baseline else ["sft"]:
            lm = self.models.lm(role)
            role_ids = lm.encode_prompt(prompt, ending=ending)
            if truncate_prompt and lm.max_context is not None and len(role_ids) + budget > lm.max_context:
                role_ids = role_ids[-max(1, lm.max_context - budget):]
            lm.check_fits(role_ids, budget, text)
            ids[role] = role_ids
        return PromptState(prompt=text, prompt_ids=ids, key=prompt_key(prompt), seed=row_params.seed,
                           rollout_seed=row_params.rollout_seed, max_new_tokens=row_params.max_new_tokens,
                           stop=row_params.stop, trace=[] if row_params.trace else None)

    def reset_caches(self) -> None:
        """Forget what the models and rewards keep between calls (prefix caches, cached reward values), so what
        runs next is charged its whole cost: the counts of an evaluation's method do not depend on the methods run
        before it (the same keyed blocks are drawn by every method with the same seed). Results are unaffected."""
        m = self.models
        for part in (m.sft, m.baseline, m.reward, m.baseline_reward):
            if part is not None:
                part.reset_cache()

    def decoder(self, params: DecodeParams) -> Decoder:
        """A :class:`Decoder` for rows made with ``params`` (checked against the models and rewards first): the one
        way a decoder is built, by :meth:`stream`, a server's scheduler and anyone stepping rows themselves."""
        self.check(params)
        return Decoder(self.models, params)

    def finish(self, states: Sequence[PromptState], params: DecodeParams) -> list[Response]:
        """The :class:`Response` of every finished row, scored by the target reward in one call."""
        assert all(s.done for s in states), "finish() takes finished rows"
        reward = self.models.reward
        values = [None] * len(states) if reward is None else reward.score([s.prompt for s in states],
                                                                          [s.text for s in states])
        return [self._response(state, params, value) for state, value in zip(states, values)]

    def generate(self, prompts: Sequence[Prompt], params: DecodeParams, *, batch_size: int = 8, concurrency: int = 1,
                 truncate_prompt: bool = False, progress: bool = True,
                 on_response: Callable[[Response], None] | None = None) -> list[Response]:
        """Decode ``prompts`` with ``params``; returns one :class:`Response` per prompt, in order.

        Prompts decode ``batch_size`` at a time, each stopping on its own; ``on_response`` is called with each
        response as soon as its batch is done (so a caller can save finished work before the rest runs).
        ``concurrency``: batches decoded at once (see :meth:`stream`). A prompt's response does not depend on
        ``batch_size``, ``concurrency`` or the other prompts (keyed randomness, :mod:`tqstar.randomness`).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        check_prompts(prompts, "prompts")
        check_int(batch_size, "batch_size")
        check_arguments(Engine.generate, {"progress": progress, "on_response": on_response})
        check_params(params)
        batches = [list(prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]
        done: dict[int, list[Response]] = {}
        bar = tqdm(total=len(prompts) * params.max_new_tokens, desc=params.method, unit="tok", disable=not progress,
                   leave=False)
        try:
            for index, responses in self.stream(batches, params, concurrency=concurrency,
                                                truncate_prompt=truncate_prompt, on_step=TokenProgress(bar)):
                done[index] = responses
                for response in responses:
                    if on_response is not None:
                        on_response(response)
        finally:
            bar.close()
        return [response for index in range(len(batches)) for response in done[index]]

    def stream(self, batches: Sequence[Sequence[Prompt]], params: DecodeParams, *, concurrency: int = 1,
               truncate_prompt: bool = False, on_step: OnStep | None = None) -> Iterator[tuple[int, list[Response]]]:
        """Decode each batch of prompts (together, each prompt stopping on its own); yields ``(batch index,
        responses)`` as each batch finishes, in the caller's thread.

        Each batch is :meth:`new_state` rows stepped by one :meth:`decoder` to the end, then :meth:`finish`.
        ``on_step(stepped, finished)`` is called after every step of every batch (from worker threads when
        ``concurrency`` > 1), e.g. to move a progress bar per token (:class:`TokenProgress`). With ``concurrency``
        > 1 that many batches decode at once in threads, which keeps model servers busy while a batch waits on its
        own requests; it needs every model to be thread-safe (remote). Every prompt is checked before the first
        batch starts.
        """
        check_params(params)
        if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence):
            raise ConfigError(f"`batches` must be a list of lists of prompts, got {describe(batches)}", param="batches",
                              value=batches)
        for b, batch in enumerate(batches):
            check_prompts(batch, f"batches[{b}]")
        check_arguments(Engine.stream, {"truncate_prompt": truncate_prompt, "on_step": on_step})
        self.check(params, concurrency)
        states = [[self.new_state(p, params, truncate_prompt=truncate_prompt) for p in batch] for batch in batches]

        def decode(batch: list[PromptState]) -> list[Response]:
            return self.finish(self.decoder(params).run(batch, on_step=on_step), params)

        if concurrency == 1:
            for index, batch in enumerate(states):
                yield index, decode(batch)
            return
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tqstar-batch") as pool:
            futures = {pool.submit(decode, batch): index for index, batch in enumerate(states)}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:  # an error or an abandoned stream: start no further batch
                for future in futures:
                    future.cancel()

    # ---- helpers ----------------------------------------------------------------------------------------
    def _response(self, state: PromptState, params: DecodeParams, value: float | None) -> Response:
        return Response(
            prompt=state.prompt,
            method=params.method,
            text=state.text,
            token_ids=list(state.response),
            finish_reason=state.finish_reason or "length",
            reward=value,
            kl=sum(state.kl) if state.kl_kind is not None else None,
            kl_bound=_bound(state.kl_bound) if state.kl_bound else None,
            kl_per_step=list(state.kl),
            accounting=state.accounting,
            trace=state.trace,
            kl_kind=state.kl_kind,
        )


def _bound(steps: Sequence[float]) -> float | None:
    """The per-step KL bounds summed; ``None`` when a step claims none (+inf: the tail at T ≠ 1, ``rolling``)."""
    total = sum(steps)
    return None if math.isinf(total) else total


class TokenProgress:
    """An ``on_step`` callback that moves a tqdm ``bar`` (total: rows × max_new_tokens) by one per generated token,
    and by a row's unused budget when it finishes early, so the bar ends exactly at its total."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self._counted: dict[int, int] = {}
        self._lock = threading.Lock()

    def __call__(self, stepped: Sequence[PromptState], finished: Sequence[PromptState]) -> None:
        with self._lock:
            delta = 0
            for row in stepped:
                now = row.max_new_tokens if row.done else len(row.response)
                delta += now - self._counted.get(id(row), 0)
                if row.done:
                    self._counted.pop(id(row), None)
                else:
                    self._counted[id(row)] = now
            self.bar.update(delta)


def reward_prompt(prompt: Prompt) -> str:
    """The prompt text rewards read: the str itself, or the content of a message list's last user turn (of its
    last message when no turn is the user's: a system-only conversation, as OpenAI and vLLM accept)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    if not users:
        return str(prompt[-1].get("content", "")) if prompt else ""
    return str(users[-1])


def check_prompts(prompts: object, name: str) -> None:
    """Raise :class:`ConfigError` unless ``prompts`` is a non-empty list of prompts (each a non-empty string or a list
    of chat messages), naming the first bad one as ``name[i]``."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ConfigError(f"`{name}` must be a list of prompts (strings or chat-message lists), got"
                          f" {describe(prompts)}", param=name, value=prompts)
    if not prompts:
        raise ConfigError(f"no prompts given in `{name}`; pass at least one prompt", param=name)
    for i, prompt in enumerate(prompts):
        check_prompt(prompt, f"`{name}[{i}]`")


def check_params(params: object) -> None:
    """Raise :class:`ConfigError` unless ``params`` is a :class:`DecodeParams` (a mapping is a common slip)."""
    require_type(params, DecodeParams, "params", "a DecodeParams", "build it with DecodeParams(...) or"
                 " DecodeParams.from_dict(values)")


def check_concurrency(concurrency: int, local: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``concurrency`` is a positive integer that the models allow (``local``:
    the names of the models that are not thread-safe)."""
    check_int(concurrency, "concurrency")
    if concurrency > 1 and local:
        raise ConfigError(f"`concurrency` {concurrency} decodes several batches at once, which needs remote models"
                          f" (openai:...), but the {local[0]} model is local; use concurrency 1 and a larger batch_size",
                          param="concurrency", value=concurrency)


def shares_vocabulary(sft: LanguageModel, baseline: LanguageModel) -> bool:
    """Whether the two models have the same number of logits and, where both have a tokenizer, the same one."""
    vocab_a, vocab_b = _vocab(sft), _vocab(baseline)
    return sft.vocab_size == baseline.vocab_size and (vocab_a is None or vocab_b is None or vocab_a == vocab_b)


def check_same_vocabulary(sft: LanguageModel, baseline: LanguageModel) -> None:
    """Raise :class:`VocabularyMismatchError` unless the two models share a vocabulary."""
    if not shares_vocabulary(sft, baseline):
        vocab_a, vocab_b = _vocab(sft), _vocab(baseline)
        size_a = len(vocab_a) if vocab_a is not None else sft.vocab_size
        size_b = len(vocab_b) if vocab_b is not None else baseline.vocab_size
        raise VocabularyMismatchError(
            f"SFT model {sft.name} ({size_a} tokens, {sft.vocab_size} logits) and baseline {baseline.name}"
            f" ({size_b} tokens, {baseline.vocab_size} logits) have different vocabularies; let the engine bridge"
            " them through text (bridge=None, the default) or give a baseline that shares the SFT model's tokenizer"
        )


def check_same_eos(sft: LanguageModel, baseline: LanguageModel) -> None:
    """Raise :class:`ConfigError` unless the two models end responses at the same EOS ids (the decoder stops on
    the SFT model's; rollouts of the baseline stop on its own, and a finished rollout must mean a finished
    response)."""
    if sft.eos_token_ids != baseline.eos_token_ids:
        raise ConfigError(
            f"SFT model {sft.name} ends responses at EOS ids {sorted(sft.eos_token_ids)} but baseline {baseline.name}"
            f" at {sorted(baseline.eos_token_ids)}; give both the same eos_token_id (generation_config.json, or"
            " eos_token_ids for a served model)"
        )


def _vocab(lm: LanguageModel) -> dict | None:
    tokenizer = getattr(lm, "tokenizer", None)
    return tokenizer.get_vocab() if tokenizer is not None else None
