"""The :class:`~tqstar.lm.base.LanguageModel` contract, as checks any backend can run on itself.

``check_language_model(lm, prompts)`` asserts, using the protocol only (``encode_prompt``, ``decode``,
``top_logprobs`` or a full vocabulary's ``next_logprobs``, ``rollout``, ``score_continuations``, ``sample_outside``,
``eos_token_ids``,
``vocab_size``, ``max_context``), that the backend:

* reports sane metadata and encodes prompts to in-vocabulary ids;
* returns normalised log-probs (the whole vocabulary's sum to 1; a served top k to at most 1), the same for a
  sequence alone, in a batch and in another order, and a top k that agrees with the full distribution (or, served,
  with the likelihoods it scores);
* rolls out the same greedy continuations alone and batched, stops at EOS and at the budget, repeats seeded samples,
  keeps each prefix's sample independent of its batch mates, and never charges more forward tokens than a backend
  without any cache (a served backend counts the tokens it sends, one more per rollout);
* decodes without EOS, and scores given continuations as its next-token log-probs read position by position (a
  backend that cannot score says so in :meth:`~tqstar.lm.base.LanguageModel.check_scoring`, and that check is
  skipped);
* gives the tail of a top k (its mass completes the top k; a full vocabulary at any temperature, others refuse
  T ≠ 1 in ``check_tail``) and draws tail tokens (``sample_outside``: never an excluded token, seeded, independent
  of batch mates).

``check_eos_forced(lm, eos, prompts)`` checks a variant of the backend whose next token is always ``eos``. tqstar's
own backends run these in ``tests/lm/test_contract.py`` (transformers, the protocol's slow defaults, tabular, and a
served model behind a fake vLLM server); a new backend runs them the same way. A failed check is an
``AssertionError`` naming what differed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError
from ..lm.base import FullVocabLM, LanguageModel

ATOL = 1e-5
ROLLOUT_LEN = 8
#: How many next tokens a check asks a backend without a full vocabulary for (a server caps its log-probs).
TOP_K = 5


def contract_prefixes(lm: LanguageModel, prompts: Sequence[str]) -> list[list[int]]:
    """Sequences of different lengths, some sharing a stem: each encoded prompt ``p`` (when non-empty), ``p``
    plus one of two different tokens, ``p`` plus three tokens, and a one-token sequence.

    The added tokens are the three highest non-EOS ids, so this works for a backend whose prompts encode to
    nothing (a tabular model with one context)."""
    extra = [t for t in range(lm.vocab_size - 1, -1, -1) if t not in lm.eos_token_ids][:3]
    seqs = []
    for prompt in prompts:
        ids = list(lm.encode_prompt(prompt))
        for tail in ([], extra[:1], extra[1:2], extra):
            if ids or tail:
                seqs.append(ids + tail)
    return seqs + [seqs[0][:1]]


def stream_seeds(seed: int | None, count: int) -> list[int] | None:
    """One stream seed per prefix (``None`` stays unseeded)."""
    return None if seed is None else [seed * 1000 + i for i in range(count)]


def naive_rollout_cost(prefixes: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]]) -> int:
    """Tokens a backend without any cache runs: the whole sequence (at least one token) per generated token."""
    return sum(max(1, len(p) + i) for p, out in zip(prefixes, tokens) for i in range(len(out)))


def check_metadata(lm: LanguageModel, prompts: Sequence[str]) -> None:
    assert isinstance(lm.vocab_size, int) and lm.vocab_size > 0
    assert isinstance(lm.eos_token_ids, frozenset) and lm.eos_token_ids
    assert all(isinstance(e, int) and 0 <= e < lm.vocab_size for e in lm.eos_token_ids)
    for prompt in prompts:
        ids = lm.encode_prompt(prompt)
        assert isinstance(ids, list), prompt
        assert all(isinstance(i, int) and 0 <= i < lm.vocab_size for i in ids), prompt
    if lm.max_context is None:  # an unbounded model never refuses a prompt
        lm.check_fits([0] * 10_000, 10_000, "long")


def next_token_view(lm: LanguageModel, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(log-probs, token ids, forward tokens)`` of the next token after each sequence: the whole vocabulary of a
    :class:`FullVocabLM` (ids ``0..V-1``), else the backend's top :data:`TOP_K`."""
    if isinstance(lm, FullVocabLM):
        step = lm.next_logprobs(seqs)
        ids = torch.arange(step.logprobs.shape[-1]).expand(len(seqs), -1)
        return step.logprobs, ids, list(step.forward_tokens)
    top = lm.top_logprobs(seqs, TOP_K)
    return top.logprobs, top.token_ids, list(top.forward_tokens)


def check_normalised(lm: LanguageModel, prompts: Sequence[str]) -> None:
    seqs = contract_prefixes(lm, prompts)
    logprobs, ids, forward = next_token_view(lm, seqs)
    width = lm.vocab_size if isinstance(lm, FullVocabLM) else TOP_K
    assert logprobs.shape == ids.shape == (len(seqs), width)
    assert logprobs.dtype == torch.float32
    assert not torch.isnan(logprobs).any()
    assert (logprobs <= ATOL).all()
    assert ((ids >= 0) & (ids < lm.vocab_size)).all()
    total = torch.logsumexp(logprobs, dim=-1)
    if isinstance(lm, FullVocabLM):  # the whole vocabulary sums to 1
        torch.testing.assert_close(total, torch.zeros(len(seqs)), atol=ATOL, rtol=0)
    else:  # a top k, most likely first, holds at most all of it
        assert (total <= ATOL).all() and (logprobs[:, :-1] >= logprobs[:, 1:] - ATOL).all()
    assert len(forward) == len(seqs)
    assert all(0 <= n <= len(s) for n, s in zip(forward, seqs)), forward


def check_top_k_agrees(lm: LanguageModel, prompts: Sequence[str]) -> None:
    """``top_logprobs`` is the k most likely tokens of the full distribution (a served model: the likelihoods it
    scores for those tokens, where it can score)."""
    seqs = contract_prefixes(lm, prompts)
    top = lm.top_logprobs(seqs, TOP_K)
    assert top.logprobs.shape == top.token_ids.shape == (len(seqs), TOP_K)
    if isinstance(lm, FullVocabLM):
        full = lm.next_logprobs(seqs).logprobs
        torch.testing.assert_close(top.logprobs, full.topk(TOP_K, dim=-1).values, atol=ATOL, rtol=0)
        torch.testing.assert_close(top.logprobs, full.gather(-1, top.token_ids), atol=ATOL, rtol=0)
        return
    try:
        lm.check_scoring()
    except ConfigError:
        return  # a server without prompt log-probs: nothing else to compare with
    scored = lm.score_continuations([s for s in seqs for _ in range(TOP_K)],
                                    [[int(z)] for z in top.token_ids.flatten()])
    got = torch.tensor([lps[0] for lps in scored.logprobs], dtype=torch.float32).view(len(seqs), TOP_K)
    torch.testing.assert_close(got, top.logprobs, atol=ATOL, rtol=0)


def check_batch_equals_singles(lm: LanguageModel, prompts: Sequence[str]) -> None:
    seqs = contract_prefixes(lm, prompts)
    # Singles first, so that a caching backend cannot answer the batch (or the singles) from the other.
    singles = [tuple(x[0] for x in next_token_view(lm, [s])[:2]) for s in seqs]
    batch, ids, _ = next_token_view(lm, seqs)
    for i, (single, single_ids) in enumerate(singles):
        torch.testing.assert_close(batch[i], single, atol=ATOL, rtol=0, msg=f"sequence {i} (length {len(seqs[i])})")
        assert torch.equal(ids[i], single_ids), f"sequence {i}: other next tokens in a batch"
    # The same sequences again in another order (a caching backend now gathers its stored rows).
    order = list(reversed(range(len(seqs))))
    again, _, _ = next_token_view(lm, [seqs[i] for i in order])
    for row, i in enumerate(order):
        torch.testing.assert_close(again[row], singles[i][0], atol=ATOL, rtol=0, msg=f"sequence {i}, reordered")


def check_greedy_rollout_batch_equals_singles(lm: LanguageModel, prompts: Sequence[str]) -> None:
    prefixes = contract_prefixes(lm, prompts)
    singles = [lm.rollout([p], ROLLOUT_LEN).tokens[0] for p in prefixes]
    batch = lm.rollout(prefixes, ROLLOUT_LEN)
    assert batch.tokens == singles
    assert lm.rollout(prefixes, ROLLOUT_LEN).tokens == singles  # repeatable (and cache-independent)


def check_rollouts_stop_at_eos(lm: LanguageModel, prompts: Sequence[str]) -> None:
    prefixes = contract_prefixes(lm, prompts)
    outputs = [lm.rollout(prefixes, ROLLOUT_LEN)]
    outputs += [lm.rollout(prefixes, ROLLOUT_LEN, temperature=2.0, seeds=stream_seeds(seed, len(prefixes))) for seed in range(3)]
    for out in outputs:
        assert len(out.tokens) == len(prefixes)
        for tokens in out.tokens:
            assert all(isinstance(t, int) and 0 <= t < lm.vocab_size for t in tokens)
            assert 1 <= len(tokens) <= ROLLOUT_LEN
            ends = [j for j, t in enumerate(tokens) if t in lm.eos_token_ids]
            if ends:
                assert ends[0] == len(tokens) - 1, f"continuation {tokens} goes on after EOS"
            else:
                assert len(tokens) == ROLLOUT_LEN, f"continuation {tokens} stopped early without EOS"


def check_seeded_sampling(lm: LanguageModel, prompts: Sequence[str]) -> None:
    prefixes = contract_prefixes(lm, prompts)
    first = lm.rollout(prefixes, ROLLOUT_LEN, temperature=1.5, seeds=stream_seeds(123, len(prefixes))).tokens
    assert lm.rollout(prefixes, ROLLOUT_LEN, temperature=1.5, seeds=stream_seeds(123, len(prefixes))).tokens == first
    others = [lm.rollout(prefixes, ROLLOUT_LEN, temperature=1.5, seeds=stream_seeds(seed, len(prefixes))).tokens
              for seed in range(5)]
    assert any(o != first for o in others), "five other seeds all sampled the same continuations"
    unseeded = lm.rollout(prefixes, ROLLOUT_LEN, temperature=1.5, seeds=None).tokens
    assert len(unseeded) == len(prefixes)


def check_seeded_rows_are_independent(lm: LanguageModel, prompts: Sequence[str]) -> None:
    """A prefix's sampled continuation depends only on its own seed: the same alone, in a batch, in another
    position, with other budgets beside it; copies of one prefix with different seeds are different samples."""
    prefixes = contract_prefixes(lm, prompts)
    seeds = stream_seeds(5, len(prefixes))
    batch = lm.rollout(prefixes, ROLLOUT_LEN, temperature=1.5, seeds=seeds).tokens
    order = list(reversed(range(len(prefixes))))
    shuffled = lm.rollout([prefixes[i] for i in order], ROLLOUT_LEN, 1.5, [seeds[i] for i in order]).tokens
    assert [shuffled[order.index(i)] for i in range(len(prefixes))] == batch
    for i in (0, len(prefixes) // 2, len(prefixes) - 1):
        assert lm.rollout([prefixes[i]], ROLLOUT_LEN, 1.5, [seeds[i]]).tokens[0] == batch[i], f"prefix {i} alone"
    ragged = lm.rollout(prefixes, [ROLLOUT_LEN if i % 2 else 1 for i in range(len(prefixes))], 1.5, seeds).tokens
    assert all(ragged[i] == batch[i] for i in range(1, len(prefixes), 2))
    copies = lm.rollout([prefixes[0]] * 6, ROLLOUT_LEN, 1.5, stream_seeds(9, 6)).tokens
    assert len({tuple(t) for t in copies}) > 1, "six seeds gave six identical samples"


def check_forward_tokens(lm: LanguageModel, prompts: Sequence[str]) -> None:
    prefixes = contract_prefixes(lm, prompts)
    sent = 0 if isinstance(lm, FullVocabLM) else len(prefixes)  # a server counts what it is sent, + the new token
    for temperature, seed in ((0.0, None), (1.5, 7)):
        out = lm.rollout(prefixes, ROLLOUT_LEN, temperature=temperature, seeds=stream_seeds(seed, len(prefixes)))
        assert len(out.forward_tokens) == len(prefixes)
        assert all(n >= 1 for n in out.forward_tokens), out.forward_tokens
        assert sum(out.forward_tokens) <= naive_rollout_cost(prefixes, out.tokens) + sent, out.forward_tokens
    assert lm.rollout([], ROLLOUT_LEN).tokens == []


def check_decode(lm: LanguageModel, prompts: Sequence[str]) -> None:
    eos = min(lm.eos_token_ids)
    for tokens in lm.rollout(contract_prefixes(lm, prompts), ROLLOUT_LEN).tokens:
        body = [t for t in tokens if t not in lm.eos_token_ids]
        text = lm.decode(body)
        assert isinstance(text, str)
        assert lm.decode(body + [eos]) == text, "decode must drop the EOS token"


def assert_close_lists(got: Sequence[float], want: Sequence[float], atol: float) -> None:
    """``got`` and ``want`` have the same length and agree within ``atol`` element by element (-inf equals -inf)."""
    assert len(got) == len(want) and all(a == b or abs(a - b) <= atol for a, b in zip(got, want)), (list(got), list(want))


def next_token_logprob(lm: LanguageModel, seq: Sequence[int], token: int) -> float:
    """log π(token | seq): from the full distribution, or a one-token score where there is none."""
    if isinstance(lm, FullVocabLM):
        return float(lm.next_logprobs([seq]).logprobs[0, token])
    return lm.score_continuations([seq], [[token]]).logprobs[0][0]


def check_score_continuations(lm: LanguageModel, prompts: Sequence[str]) -> None:
    """score_continuations equals the next-token log-probs read position by position (one full forward each), for
    continuations of different lengths (one empty) after prefixes that share stems; rollouts' own log-probs agree.
    Without a full vocabulary the position-by-position numbers are the backend's own one-token scores. A backend
    that cannot score (it says so in ``check_scoring``) is skipped."""
    try:
        lm.check_scoring()
    except ConfigError:
        return
    prefixes = contract_prefixes(lm, prompts)[:6]
    extra = [t for t in range(lm.vocab_size - 1, -1, -1) if t not in lm.eos_token_ids][:4]
    conts = [extra[:1 + i % 4] if i % 5 else [] for i in range(len(prefixes))]
    conts[-1] = extra[:3] + [min(lm.eos_token_ids)]
    got = lm.score_continuations(prefixes, conts)
    assert len(got.logprobs) == len(got.forward_tokens) == len(prefixes)
    for prefix, cont, lps, total in zip(prefixes, conts, got.logprobs, got.sums):
        assert len(lps) == len(cont)
        want = [next_token_logprob(lm, list(prefix) + cont[:j], t) for j, t in enumerate(cont)]
        assert_close_lists(lps, want, ATOL)
        assert total == sum(want) or abs(total - sum(want)) <= ATOL * max(1, len(cont)), (total, sum(want))
    out = lm.rollout(prefixes, ROLLOUT_LEN, temperature=1.0, seeds=stream_seeds(5, len(prefixes)))
    if out.logprobs is not None:  # the rollout's log-probs of its own tokens are the scores of those tokens
        scored = lm.score_continuations(prefixes, out.tokens)
        for a, b in zip(out.logprobs, scored.logprobs):
            assert_close_lists(a, b, ATOL)


def check_tail_mass(lm: LanguageModel, prompts: Sequence[str]) -> None:
    """The tail of a top k (what no-truncation decoding reads, :mod:`tqstar.tail`): at T = 1 its mass completes the
    top k to the whole distribution; a full vocabulary gives it at any T (log Σ p^{1/T} and the mean log-prob over it)
    exactly as the full distribution does; a backend that cannot refuses other temperatures in ``check_tail``."""
    seqs = contract_prefixes(lm, prompts)
    top = lm.top_logprobs(seqs, TOP_K, tail_temperature=1.0)
    mass = top.tail_mass(1.0).log_mass
    assert mass.shape == (len(seqs),) and (mass <= ATOL).all()
    total = torch.logsumexp(torch.cat([top.logprobs.double(), mass.double()[:, None]], dim=-1), dim=-1)
    torch.testing.assert_close(total, torch.zeros(len(seqs), dtype=torch.float64), atol=1e-4, rtol=0)
    if not isinstance(lm, FullVocabLM):
        try:
            lm.check_tail(0.5)
        except ConfigError:
            return
        raise AssertionError(f"{lm.name} gives only its top k but accepts the tail at temperature 0.5")
    full = lm.next_logprobs(seqs).logprobs.double()
    lm.check_tail(0.5)
    for temperature in (1.0, 0.5, 2.0):
        tail = lm.top_logprobs(seqs, TOP_K, tail_temperature=temperature).tail_mass(temperature)
        rest = full.scatter(-1, top.token_ids, float("-inf")) / temperature  # (B, V)
        torch.testing.assert_close(tail.log_mass.double(), torch.logsumexp(rest, dim=-1), atol=ATOL, rtol=0)
        shape = torch.softmax(rest, dim=-1)
        mean = torch.where(shape > 0, shape * full, torch.zeros_like(full)).sum(dim=-1)
        torch.testing.assert_close(tail.mean_logprob.double(), mean, atol=ATOL, rtol=0)


def check_sample_outside(lm: LanguageModel, prompts: Sequence[str]) -> None:
    """``sample_outside`` draws a token that is not excluded, the same for a seed alone, in a batch and again, and a
    full vocabulary draws the inversion of p^{1/T} off the excluded tokens with the seed's first uniform."""
    seqs = contract_prefixes(lm, prompts)
    top = lm.top_logprobs(seqs, min(TOP_K, lm.vocab_size - 2), tail_temperature=1.0)  # a tail of >= 2 tokens
    keep = [i for i, m in enumerate(top.tail_mass(1.0).log_mass.tolist()) if m > -10]  # rows whose tail has mass
    assert keep, "no sequence has a tail with mass to draw from"
    seqs, excluded = [seqs[i] for i in keep], top.token_ids[keep]  # (B, k)
    seeds = stream_seeds(11, len(seqs))
    for temperature in (1.0, 0.7):
        out = lm.sample_outside(seqs, excluded, temperature, seeds)
        drawn = [tokens[0] for tokens in out.tokens]
        assert len(out.tokens) == len(out.forward_tokens) == len(seqs) and all(len(t) == 1 for t in out.tokens)
        for row, token in zip(excluded.tolist(), drawn):
            assert 0 <= token < lm.vocab_size and token not in row, (token, row)
        again = lm.sample_outside(seqs[::-1], excluded.flip(0), temperature, seeds[::-1])
        assert [t[0] for t in again.tokens][::-1] == drawn, "a draw depends on its batch mates or its position"
        alone = lm.sample_outside(seqs[:1], excluded[:1], temperature, seeds[:1])
        assert alone.tokens[0][0] == drawn[0]
        if isinstance(lm, FullVocabLM):
            from ..randomness import sample_by_inversion, uniforms

            weights = (lm.next_logprobs(seqs).logprobs.double() / temperature).exp().scatter(-1, excluded, 0.0)
            want = sample_by_inversion(weights.float(), torch.from_numpy(uniforms(seeds, 1)[:, 0]))
            assert drawn == want.tolist()
    others = [[t[0] for t in lm.sample_outside(seqs, excluded, 1.0, stream_seeds(s, len(seqs))).tokens]
              for s in range(4)]
    assert any(o != others[0] for o in others[1:]), "four seeds drew the same tail tokens"


CHECKS: list[Callable[[LanguageModel, Sequence[str]], None]] = [
    check_metadata,
    check_normalised,
    check_top_k_agrees,
    check_batch_equals_singles,
    check_greedy_rollout_batch_equals_singles,
    check_rollouts_stop_at_eos,
    check_seeded_sampling,
    check_seeded_rows_are_independent,
    check_forward_tokens,
    check_decode,
    check_score_continuations,
    check_tail_mass,
    check_sample_outside,
]


def check_language_model(lm: LanguageModel, prompts: Sequence[str]) -> None:
    """Assert that ``lm`` honours the :class:`LanguageModel` contract on ``prompts`` (at least two; :data:`CHECKS`)."""
    for check in CHECKS:
        check(lm, prompts)


def check_eos_forced(lm: LanguageModel, eos: int, prompts: Sequence[str]) -> None:
    """``lm`` puts (almost) all mass on ``eos``: every rollout, greedy or sampled, is exactly ``[eos]``."""
    prefixes = contract_prefixes(lm, prompts)
    if isinstance(lm, FullVocabLM):  # (a served top-1 at EOS is not asked for: llama-server leaves the EOS step out)
        assert (lm.next_logprobs(prefixes).logprobs.argmax(dim=-1) == eos).all()
    for temperature, seed in ((0.0, None), (1.0, 0)):
        out = lm.rollout(prefixes, ROLLOUT_LEN, temperature=temperature, seeds=stream_seeds(seed, len(prefixes)))
        assert out.tokens == [[eos]] * len(prefixes)
        assert all(n >= 1 for n in out.forward_tokens)
