"""A tabular language model: explicit next-token tables over a small vocabulary and a fixed horizon.

It is the exact testbed's model: every quantity of interest (Q^π, the KL-regularised optimum, the expected
reward and KL of a decoding policy) can be computed by enumerating all trajectories (see
:mod:`tqstar.eval.testbed`), and it plugs into the same decoder as a real model.

Sequences are response tokens only (the prompt is empty: one context). Token 0 is EOS. At depth
``horizon`` the model emits EOS with probability 1, so every trajectory ends with EOS within
``horizon + 1`` tokens. Text is the tokens' names joined by spaces (EOS dropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product

import torch

from .._checks import check_int, check_real, is_real
from .._schema import check_arguments
from ..errors import ConfigError
from ..text import LocalDecoding
from .base import FullVocabLM, StepOutput, TokenIds

EOS = 0


class TabularLM(FullVocabLM):
    """π(· | prefix) read from ``table[prefix]``, a probability vector over ``vocab``."""

    def __init__(self, table: dict[tuple[int, ...], torch.Tensor], vocab: Sequence[str], horizon: int,
                 name: str = "tabular") -> None:
        self.table = {k: v.double() for k, v in table.items()}
        self.vocab = list(vocab)
        self.vocab_size = len(self.vocab)
        self.horizon = horizon
        self.name = name
        self.eos_token_ids = frozenset({EOS})
        self.max_context = None
        self.local_decoding = LocalDecoding()  # names joined by spaces
        self._ids = {t: i for i, t in enumerate(self.vocab)}

    @classmethod
    def random(cls, vocab_size: int = 4, horizon: int = 3, *, seed: int = 0, concentration: float = 0.5,
               eos_weight: float = 0.3, name: str = "tabular") -> TabularLM:
        """Random tables: π(· | s) ~ Dirichlet(concentration) at every non-terminal prefix s."""
        check_int(vocab_size, "vocab_size", low=2)
        check_int(horizon, "horizon", low=1)
        check_int(seed, "seed", low=None)
        check_real(concentration, "concentration")
        if not is_real(eos_weight) or not math.isfinite(eos_weight) or eos_weight < 0:  # a weight, not decoding math
            raise ConfigError(f"`eos_weight` must be a finite number >= 0, got {eos_weight!r}", param="eos_weight",
                              value=eos_weight)
        check_arguments(TabularLM.random.__func__, {"name": name})
        if vocab_size ** horizon > 10**7:
            raise ConfigError(f"a tabular model of vocab_size {vocab_size} and horizon {horizon} has"
                              f" {vocab_size ** horizon:.3g} sequences; keep vocab_size ** horizon <= 10,000,000",
                              param="vocab_size", value=vocab_size)
        g = torch.Generator().manual_seed(seed)
        gamma = torch.distributions.Gamma(torch.full((vocab_size,), float(concentration)), torch.tensor(1.0))
        table = {}
        for prefix in prefixes(vocab_size, horizon):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            weights = gamma.sample().double() + 1e-3
            weights[EOS] *= eos_weight
            table[prefix] = weights / weights.sum()
        vocab = ["<eos>"] + [chr(ord("a") + i) for i in range(vocab_size - 1)]
        return cls(table, vocab, horizon, name=name)

    def probs(self, prefix: TokenIds) -> torch.Tensor:
        """π(· | prefix) as a float64 vector; EOS with certainty at the horizon or after EOS."""
        prefix = tuple(prefix)
        if len(prefix) >= self.horizon or EOS in prefix:
            return torch.nn.functional.one_hot(torch.tensor(EOS), self.vocab_size).double()
        return self.table[prefix]

    # ---- protocol ---------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, *, ending: str = "auto") -> list[int]:
        return []

    def decode(self, ids: TokenIds) -> str:
        return " ".join(self.vocab[i] for i in ids if i != EOS)

    def encode_text(self, text: str) -> tuple[int, ...]:
        """Inverse of :meth:`decode`: the token ids of a response text."""
        return tuple(self._ids[t] for t in text.split())

    def next_logprobs(self, seqs: Sequence[TokenIds]) -> StepOutput:
        probs = torch.stack([self.probs(s) for s in seqs]) if seqs else torch.zeros(0, self.vocab_size)
        return StepOutput(probs.log().float(), [1] * len(seqs))


def prefixes(vocab_size: int, horizon: int):
    """Every non-terminal prefix (no EOS, shorter than ``horizon``), shortest first."""
    for depth in range(horizon):
        yield from product(range(1, vocab_size), repeat=depth)
