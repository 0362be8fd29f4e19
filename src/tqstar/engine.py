"""The engine: models + rewards in, :class:`~tqstar.state.Response` objects out, for any method.

``Engine(sft, baseline, reward, baseline_reward).generate(prompts, params)`` checks the method against what
was given (before decoding anything), formats each prompt for each model, decodes in batches and scores the
finished responses with the target reward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from .decoder import decode
from .errors import ConfigError, VocabularyMismatchError, require_type
from .lm.base import LanguageModel
from .params import DecodeParams
from .reward import Reward
from .state import Models, PromptState, Response
from .trajectory import decode_trajectory
from .value import ESTIMATORS


class Engine:
    """Decoding-time alignment over one SFT model, an optional baseline and the rewards.

    Args:
        sft: the reference (SFT) model that proposes candidates.
        baseline: the aligned model whose rollouts estimate Q* (``tq-direct``, ``tq-indirect``) or that is
            decoded itself (``baseline``); it must share the SFT model's vocabulary.
        reward: the target reward.
        baseline_reward: the reward the baseline was aligned to (``tq-indirect``).
    """

    def __init__(self, sft: LanguageModel, baseline: LanguageModel | None = None, reward: Reward | None = None,
                 baseline_reward: Reward | None = None) -> None:
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
        if baseline is not None:
            check_same_vocabulary(sft, baseline)
        self.models = Models(sft=sft, baseline=baseline, reward=reward, baseline_reward=baseline_reward)

    def check(self, params: DecodeParams, concurrency: int = 1) -> None:
        """Raise :class:`ConfigError` if ``params`` (and ``concurrency``) cannot run with the models and rewards
        given."""
        m = self.models
        check_concurrency(concurrency, [lm.name for lm in (m.sft, m.baseline) if lm is not None and not lm.thread_safe])
        needs = {
            "baseline": params.uses_baseline,
            "reward": params.needs_reward,
            "baseline_reward": params.method == "tq-indirect",
        }
        flags = {"baseline": "--baseline", "reward": "--reward", "baseline_reward": "--baseline-reward"}
        for what, needed in needs.items():
            if needed and getattr(m, what) is None:
                raise ConfigError(f"method {params.method!r} needs a {what.replace('_', ' ')}; give one with {flags[what]}")
        if params.is_token_level:
            m.sft.check_k(params.k)

    def generate(self, prompts: Sequence[str], params: DecodeParams, *, batch_size: int = 8, concurrency: int = 1,
                 truncate_prompt: bool = False, progress: bool = True,
                 on_response: Callable[[Response], None] | None = None) -> list[Response]:
        """Decode ``prompts`` with ``params``; returns one :class:`Response` per prompt, in order.

        Prompts decode ``batch_size`` at a time, each stopping on its own; ``on_response`` is called with each
        response as soon as its batch is done (so a caller can save finished work before the rest runs).
        ``concurrency``: batches decoded at once (see :meth:`stream`).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ConfigError("no prompts given; pass at least one prompt")
        if batch_size < 1:
            raise ConfigError(f"`batch_size` must be an integer >= 1, got {batch_size}")
        batches = [list(prompts[start:start + batch_size]) for start in range(0, len(prompts), batch_size)]
        done: dict[int, list[Response]] = {}
        bar = tqdm(total=len(prompts), desc="prompts", unit="prompt", disable=not progress or len(prompts) <= batch_size)
        try:
            for index, responses in self.stream(batches, params, concurrency=concurrency,
                                                truncate_prompt=truncate_prompt, progress=progress):
                done[index] = responses
                for response in responses:
                    if on_response is not None:
                        on_response(response)
                bar.update(len(responses))
        finally:
            bar.close()
        return [response for index in range(len(batches)) for response in done[index]]

    def stream(self, batches: Sequence[Sequence[str]], params: DecodeParams, *, concurrency: int = 1,
               truncate_prompt: bool = False, progress: bool = True) -> Iterator[tuple[int, list[Response]]]:
        """Decode each batch of prompts (together, each prompt stopping on its own); yields ``(batch index,
        responses)`` as each batch finishes, in the caller's thread.

        With ``concurrency`` > 1 that many batches decode at once in threads, which keeps model servers busy while
        a batch waits on its own requests; it needs every model to be thread-safe (remote). Every prompt is
        checked before the first batch starts.
        """
        self.check(params, concurrency)
        states = [[self._state(p, params, truncate_prompt) for p in batch] for batch in batches]
        if concurrency == 1:
            for index, batch in enumerate(states):
                yield index, self._decode_batch(batch, params, progress)
            return
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tqstar-batch") as pool:
            futures = {pool.submit(self._decode_batch, batch, params, False): index for index, batch in enumerate(states)}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:  # an error or an abandoned stream: start no further batch
                for future in futures:
                    future.cancel()

    def _decode_batch(self, batch: list[PromptState], params: DecodeParams, progress: bool) -> list[Response]:
        """Decode one batch to the end and score it with the target reward (one call for the batch)."""
        for state in batch:
            state.accounting.batch_size = len(batch)
        if params.is_token_level:
            decode(self.models, batch, ESTIMATORS[params.method](self.models, params), params, progress=progress)
        else:
            decode_trajectory(self.models, batch, params)
        reward = self.models.reward
        values = [None] * len(batch) if reward is None else reward.score([s.prompt for s in batch],
                                                                         [s.text for s in batch])
        return [self._response(state, params, value) for state, value in zip(batch, values)]

    # ---- helpers ----------------------------------------------------------------------------------------
    def _state(self, prompt: str, params: DecodeParams, truncate_prompt: bool) -> PromptState:
        budget = params.max_new_tokens + (params.rollout_len if params.rolls_out else 0)
        ids = {}
        for role in ["sft", "baseline"] if params.uses_baseline else ["sft"]:
            lm = self.models.lm(role)
            role_ids = lm.encode_prompt(prompt)
            if truncate_prompt and lm.max_context is not None and len(role_ids) + budget > lm.max_context:
                role_ids = role_ids[-max(1, lm.max_context - budget):]
            lm.check_fits(role_ids, budget, prompt)
            ids[role] = role_ids
        return PromptState(prompt=prompt, prompt_ids=ids, trace=[] if params.trace else None)

    def _response(self, state: PromptState, params: DecodeParams, value: float | None) -> Response:
        token_level = params.is_token_level
        return Response(
            prompt=state.prompt,
            method=params.method,
            text=state.text,
            token_ids=list(state.response),
            finish_reason=state.finish_reason or "length",
            reward=value,
            kl=sum(state.kl) if token_level else None,
            kl_bound=sum(state.kl_bound) if token_level and state.kl_bound else None,
            kl_per_step=list(state.kl),
            accounting=state.accounting,
            trace=state.trace,
        )


def check_concurrency(concurrency: int, local: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``concurrency`` is a positive integer that the models allow (``local``:
    the names of the models that are not thread-safe)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"`concurrency` must be an integer >= 1, got {concurrency!r}")
    if concurrency > 1 and local:
        raise ConfigError(f"`concurrency` {concurrency} decodes several batches at once, which needs remote models"
                          f" (openai:...), but the {local[0]} model is local; use concurrency 1 and a larger batch_size")


def check_same_vocabulary(sft: LanguageModel, baseline: LanguageModel) -> None:
    """Raise :class:`VocabularyMismatchError` unless the two models share a vocabulary."""
    same = sft.vocab_size == baseline.vocab_size
    vocab_a, vocab_b = _vocab(sft), _vocab(baseline)
    if same and vocab_a is not None and vocab_b is not None:
        same = vocab_a == vocab_b
    if not same:
        size_a = len(vocab_a) if vocab_a is not None else sft.vocab_size
        size_b = len(vocab_b) if vocab_b is not None else baseline.vocab_size
        raise VocabularyMismatchError(
            f"SFT model {sft.name} ({size_a} tokens, {sft.vocab_size} logits) and baseline {baseline.name}"
            f" ({size_b} tokens, {baseline.vocab_size} logits) have different vocabularies; TQ* needs a baseline"
            " that shares the SFT model's tokenizer"
        )


def _vocab(lm: LanguageModel) -> dict | None:
    tokenizer = getattr(lm, "tokenizer", None)
    return tokenizer.get_vocab() if tokenizer is not None else None
