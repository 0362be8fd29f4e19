"""The :class:`~tqstar.lm.base.LanguageModel` contract (:mod:`tqstar.testing.contract`) on every backend: transformers,
the protocol's slow defaults, tabular, and a served model behind the fake OpenAI server in both dialects.

A new backend joins by adding a factory to :data:`BACKENDS` that returns the backend, a variant of it whose next
token is always one EOS id, and that id.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import TEST_DEVICE
from fake_openai import FakeServer

from tqstar.lm.base import FullVocabLM, LanguageModel, StepOutput
from tqstar.lm.hf import TransformersLM
from tqstar.lm.remote import RemoteLM
from tqstar.lm.tabular import TabularLM
from tqstar.testing.contract import (
    CHECKS,
    ROLLOUT_LEN,
    check_eos_forced,
    check_language_model,
    contract_prefixes,
    naive_rollout_cost,
    stream_seeds,
)

PROMPTS = [
    "the cat sat on the mat",
    "how do i make a cup of tea?",
    "thank you",
    "we can learn a lot from books, from friends and from the mistakes we make along the way",
]


# ---- backends -----------------------------------------------------------------------------------------------
class ProtocolDefaultLM(FullVocabLM):
    """A backend without a cache that implements only the abstract methods (delegating to a transformers
    backend with its prefix cache off: no stored rows, no stem shared within a call), so the base class's default
    :meth:`LanguageModel.rollout` is what runs, and every call costs the naive token count."""

    def __init__(self, inner: TransformersLM) -> None:
        self.inner = inner.with_prompt_format(prefix_cache=False)
        self.name = f"default-rollout({inner.name})"
        self.vocab_size = inner.vocab_size
        self.eos_token_ids = inner.eos_token_ids
        self.max_context = inner.max_context

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.inner.encode_prompt(prompt)

    def decode(self, ids) -> str:
        return self.inner.decode(ids)

    def next_logprobs(self, seqs) -> StepOutput:
        return self.inner.next_logprobs(seqs)


EOS_ID = 2  # the tiny models' EOS


def _eos_forcing_model(model):
    """A copy of ``model`` whose lm_head puts all mass on :data:`EOS_ID` (zero weights, a large EOS bias)."""
    model = copy.deepcopy(model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True, device=old.weight.device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[EOS_ID] = 50.0
    model.lm_head = head
    return model.eval()


def _transformers(tiny_paths, cleanup) -> tuple[LanguageModel, LanguageModel, int]:
    lm = TransformersLM.from_pretrained(tiny_paths["sft"], name="tiny-sft", device=TEST_DEVICE)
    eos_lm = TransformersLM(_eos_forcing_model(lm.model), lm.tokenizer, name="tiny-eos")
    return lm, eos_lm, EOS_ID


def _protocol_default(tiny_paths, cleanup) -> tuple[LanguageModel, LanguageModel, int]:
    lm, eos_lm, eos = _transformers(tiny_paths, cleanup)
    return ProtocolDefaultLM(lm), ProtocolDefaultLM(eos_lm), eos


def _tabular(tiny_paths, cleanup) -> tuple[LanguageModel, LanguageModel, int]:
    return TabularLM.random(5, 4, seed=0), TabularLM.random(5, 4, seed=0, eos_weight=1e9), 0


def _served(flavor: str):
    """The tiny transformers models behind the fake OpenAI server (``flavor``: ``vllm`` or ``llama.cpp``), as
    :class:`RemoteLM` models with the local tokenizer."""
    def factory(tiny_paths, cleanup) -> tuple[LanguageModel, LanguageModel, int]:
        lm, eos_lm, eos = _transformers(tiny_paths, cleanup)
        models = []
        for model in (lm, eos_lm):
            server = FakeServer(model, flavor)
            cleanup.append(server.close)
            models.append(RemoteLM(server.url, server.name, tokenizer=tiny_paths["sft"], retries=1, backoff=0.01))
        return models[0], models[1], eos
    return factory


#: name -> factory(tiny_paths, cleanup) returning (backend, EOS-forcing variant, the forced EOS id); ``cleanup``
#: collects what to close afterwards.
BACKENDS: dict[str, Callable] = {
    "transformers": _transformers,
    "protocol-default": _protocol_default,
    "tabular": _tabular,
    "remote-vllm": _served("vllm"),
    "remote-llama.cpp": _served("llama.cpp"),
}


@pytest.fixture(params=sorted(BACKENDS), scope="module")
def backend(request, tiny_paths):  # one per module: the checks hold whatever a backend has cached before
    cleanup: list[Callable[[], None]] = []
    yield BACKENDS[request.param](tiny_paths, cleanup)
    for close in cleanup:
        close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract(backend, check):
    lm, _, _ = backend
    check(lm, PROMPTS)


def test_check_language_model_on_raw_text_prompts(sft):
    check_language_model(sft.with_prompt_format(chat_template=False), PROMPTS)


def test_rollout_stops_at_forced_eos(backend):
    _, eos_lm, eos = backend
    assert eos in eos_lm.eos_token_ids
    check_eos_forced(eos_lm, eos, PROMPTS)


def test_default_rollout_equals_transformers_rollout(sft):
    """The base class's slow rollout and the cached override return the same tokens, greedy and seeded."""
    reference = ProtocolDefaultLM(TransformersLM(sft.model, sft.tokenizer))
    prefixes = contract_prefixes(sft, PROMPTS)
    for temperature, seed in ((0.0, None), (1.5, 3)):
        expected = reference.rollout(prefixes, ROLLOUT_LEN, temperature=temperature, seeds=stream_seeds(seed, len(prefixes)))
        assert sum(expected.forward_tokens) == naive_rollout_cost(prefixes, expected.tokens)
        got = sft.rollout(prefixes, ROLLOUT_LEN, temperature=temperature, seeds=stream_seeds(seed, len(prefixes)))
        assert got.tokens == expected.tokens
        assert sum(got.forward_tokens) < sum(expected.forward_tokens)
