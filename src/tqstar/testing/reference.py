"""The yardsticks of ``bench/speed.py``: the naive reference, and the rollout limit.

:func:`naive_generate` is greedy TQ* the way the official research code does it. Every step it re-encodes the SFT
prefix from scratch, and for *each* candidate runs a fresh ``generate`` of the rollout model from the full prefix
(for up to ``rollout_len`` tokens, fewer when the response has less left; no cache carried across steps, no prefix
sharing between candidates), decodes the rollout to text and scores it. Small and obviously correct; the engine
must choose the same tokens (``tests/integration/test_speed.py``), and ``bench/speed.py`` measures how much faster
it is. :func:`naive_step` is one of its steps from a given response prefix, so the benchmark can time naive steps
anywhere in a response.

:func:`rollout_limit` is the work no exact method can skip without pruning: at every step of a response, the
rollouts of the same candidates with the same budgets and EOS stops as the engine's, as bare forward calls from
an already encoded prefix, and one reward batch. With pruning and rollout reuse off the engine runs exactly its
rollout tokens (``tests/integration/test_speed.py``).

:func:`naive_bridged_q` is the same yardstick for one value through the text bridge (a baseline with another
tokenizer): Q̂ by its text-level definition (``tests/lm/test_bridge.py``, ``tests/integration/test_weak_to_strong.py``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..engine import Engine
from ..params import DecodeParams
from ..state import Response
from ..text import cut_at_stop, response_text


def _check_greedy_direct(engine: Engine, params: DecodeParams) -> None:
    assert params.method in ("tq-direct", "cd") and params.temperature == 0 and params.n_rollouts == 1
    assert params.rollout_temperature == 0, "the reference rolls out greedily"
    assert not params.stop, "the reference knows no stop strings"
    assert engine.models.bridge is None, "the reference shares the SFT vocabulary (the bridge has naive_bridged_q)"


def _budget(params: DecodeParams, t: int) -> int:
    """The rollout budget after a candidate at step ``t``: ``rollout_len``, capped by what the response has left."""
    return min(params.rollout_len, params.max_new_tokens - t - 1)


@torch.inference_mode()
def naive_generate(engine: Engine, prompt: str, params: DecodeParams, tokens: int | None = None) -> list[int]:
    """Greedy ``tq-direct`` (or ``cd``) response token ids for ``prompt``, computed naively: the whole response,
    or its first ``tokens`` (with the rollout budgets of the whole response's steps)."""
    _check_greedy_direct(engine, params)
    eos = engine.models.sft.eos_token_ids
    response: list[int] = []
    for _ in range(params.max_new_tokens if tokens is None else min(tokens, params.max_new_tokens)):
        response.append(naive_step(engine, prompt, response, params))
        if response[-1] in eos:
            break
    return response


@torch.inference_mode()
def naive_step(engine: Engine, prompt: str, response: list[int], params: DecodeParams) -> int:
    """The token naive greedy ``tq-direct`` (or ``cd``) chooses after ``response``."""
    _check_greedy_direct(engine, params)
    models = engine.models
    sft = models.sft
    roller = models.lm("baseline" if params.method == "tq-direct" else "sft")
    sft_ids, roll_ids = sft.encode_prompt(prompt), roller.encode_prompt(prompt)
    eos = sorted(sft.eos_token_ids)
    logits = sft.model(torch.tensor([sft_ids + response], device=sft.device)).logits[0, -1].float()
    top_lp, candidates = torch.log_softmax(logits, -1).topk(params.k)
    q = []
    budget = _budget(params, len(response))
    for z in candidates.tolist():
        tail: list[int] = []
        if z not in eos and budget > 0:
            prefix = torch.tensor([roll_ids + response + [z]], device=roller.device)
            out = roller.model.generate(
                prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=budget,
                do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=eos[0],
            )
            tail = out[0, prefix.shape[1]:].tolist()
        text = roller.tokenizer.decode(response + [z] + tail, skip_special_tokens=True)
        q.append(models.reward.score([prompt], [text])[0])
    return int(candidates[int((top_lp.cpu() + params.alpha * torch.tensor(q)).argmax())])


@dataclass
class LimitRun:
    """What :func:`rollout_limit` did: ``seconds`` of timed work, ``forward_tokens`` the rollouts ran (one per
    generated token), ``rollouts`` (``eos_stops`` of them ended at EOS before their budget) and ``texts`` scored,
    over ``steps`` decoding steps."""

    seconds: float = 0.0
    forward_tokens: int = 0
    rollouts: int = 0
    eos_stops: int = 0
    texts: int = 0
    steps: int = 0


@torch.inference_mode()
def rollout_limit(engine: Engine, responses: Sequence[Response], params: DecodeParams, *,
                  score: bool = True) -> LimitRun:
    """The unavoidable work of greedy ``tq-direct`` (``cd``) without pruning at every step of ``responses``.

    At step t of a response: the candidates are the SFT model's top k after the committed prefix; each that does
    not end the response (an EOS id, or the last step, whose budget is 0) is rolled out greedily by the policy model
    for its budget ``min(rollout_len, max_new_tokens - t - 1)``, a row stopping at EOS — all as one batch of bare
    ``model(...)`` calls from the committed prefix's KV, finished rows dropped; then (``score``) the k texts are
    decoded and scored in one reward batch (reward cache off). Only that is timed. The committed prefixes are
    encoded untimed, one token per step, and the candidates found there. Greedy, N = 1, no stop strings.
    """
    from transformers import DynamicCache

    _check_greedy_direct(engine, params)
    sft, reward = engine.models.sft, engine.models.reward
    roller = engine.models.lm("baseline" if params.method == "tq-direct" else "sft")
    run = LimitRun()
    for r in responses:
        sft_cache, roll_cache = DynamicCache(), DynamicCache()
        sft_new, roll_new = sft.encode_prompt(r.prompt), roller.encode_prompt(r.prompt)
        for t in range(len(r.token_ids)):
            if t:
                sft_new = roll_new = [r.token_ids[t - 1]]
            logits = _extend(sft.model, sft_cache, sft_new)  # untimed: the committed prefix and its candidates
            _extend(roller.model, roll_cache, roll_new)
            candidates = torch.log_softmax(logits.float(), -1).topk(params.k).indices.tolist()
            budget = _budget(params, t)
            rolled = [z for z in candidates if z not in sft.eos_token_ids and budget > 0]
            stems = [(layer.keys.expand(len(rolled), -1, -1, -1).contiguous(),
                      layer.values.expand(len(rolled), -1, -1, -1).contiguous()) for layer in roll_cache.layers]
            start = time.perf_counter()
            tails = _greedy_rows(roller, DynamicCache(ddp_cache_data=stems), rolled, budget, run) if rolled else []
            if score:
                ends = dict(zip(rolled, tails))
                texts = [response_text(roller, r.token_ids[:t] + [z] + ends.get(z, [])) for z in candidates]
                reward.cache_size, saved = 0, reward.cache_size
                reward.score([r.prompt] * len(texts), texts)
                reward.cache_size = saved
                run.texts += len(texts)
            run.seconds += time.perf_counter() - start
            run.rollouts += len(rolled)
            run.steps += 1
    return run


def _extend(model, cache, ids: list[int]) -> torch.Tensor:
    """Run ``ids`` after ``cache`` (appended to it); the logits after the last one."""
    out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True, logits_to_keep=1,
                **{_cache_kwarg(model): cache})
    return out.logits[0, -1]


def _cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in transformers >= 5, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _greedy_rows(lm, cache, first: list[int], budget: int, run: LimitRun) -> list[list[int]]:
    """Greedy continuations of ``first`` (one row each, on ``cache``): ``budget`` tokens or to EOS; finished rows
    leave the batch. Counts a forward token per row and step in ``run``."""
    model, eos, kwarg = lm.model, lm.eos_token_ids, _cache_kwarg(lm.model)
    tails: list[list[int]] = [[] for _ in first]
    alive = list(range(len(first)))
    feed = torch.tensor(first, device=model.device)[:, None]  # (R, 1)
    for _ in range(budget):
        chosen = model(input_ids=feed, use_cache=True, logits_to_keep=1, **{kwarg: cache}).logits[:, -1].argmax(-1)
        run.forward_tokens += len(alive)
        keep = []
        for j, (i, token) in enumerate(zip(alive, chosen.tolist())):
            tails[i].append(token)
            if token in eos:
                run.eos_stops += len(tails[i]) < budget
            elif len(tails[i]) < budget:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=model.device)
            cache.reorder_cache(index)
            alive, chosen = [alive[j] for j in keep], chosen.index_select(0, index)
        feed = chosen[:, None]
    return tails


@torch.inference_mode()
def naive_bridged_q(sft, baseline, prompt: str, response: list[int], z: int, params: DecodeParams,
                    reward: Callable[[list[str], list[str]], Sequence[float]]) -> float:
    """Q̂(s, z) of greedy tq-direct through the text bridge, by the definition: decode the SFT response with z, drop
    an incomplete last character, re-encode in the baseline's tokenizer after its own prompt, roll out with
    ``generate``, decode the rollout in context, join, cut at stop strings, score with ``reward(prompts, texts)``.
    ``sft`` and ``baseline`` are :class:`~tqstar.lm.hf.TransformersLM` models."""
    sft_tok, bl_tok = sft.tokenizer, baseline.tokenizer
    full = sft_tok.decode(response + [z], skip_special_tokens=True)
    text = full.rstrip("\ufffd")
    budget = min(params.rollout_len, params.max_new_tokens - len(response) - 1)
    ends = z == sft_tok.eos_token_id or budget <= 0 or any(s in full for s in params.stop)
    if not ends:
        encoded = bl_tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []
        ids = torch.tensor([baseline.encode_prompt(prompt) + encoded], device=baseline.device)
        out = baseline.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
                                      eos_token_id=bl_tok.eos_token_id, pad_token_id=bl_tok.pad_token_id)
        tail = out[0, ids.shape[1]:].tolist()
        before = bl_tok.decode(encoded, skip_special_tokens=True)
        after = bl_tok.decode(encoded + tail, skip_special_tokens=True)
        same = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
        text = (text + after[same:]).rstrip("\ufffd")
    return reward([prompt], [cut_at_stop(text, params.stop)])[0]
