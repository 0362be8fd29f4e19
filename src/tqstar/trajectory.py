"""Plain decoding of one model: ``sft`` / ``baseline``.

Decode that model over its full vocabulary, one token per decoder step (greedy at temperature 0, else sampled from
the row's keyed ``"plain"`` stream at its position), so they stop at EOS, a stop string or the budget as they
generate, and can stream. The decoder records their exact per-step KL to the SFT model
(:meth:`tqstar.decoder.Decoder._record_plain_kl`). Best-of-N is a blockwise decision whose blocks are whole
responses (:mod:`tqstar.blocks`).
"""

from __future__ import annotations

from .params import DecodeParams
from .randomness import stream_seed
from .state import Models, PromptState


def plain_tokens(models: Models, params: DecodeParams, rows: list[PromptState]) -> tuple[list[int], list[float] | None]:
    """The next token of every row from the full distribution of the model the plain method decodes; charged to each
    row. Also each token's log-probability under that model (untempered), where the backend returns it."""
    role = params.method_row.rolls
    seeds = None if params.temperature == 0 else [stream_seed(r.seed, r.key, "plain", r.step) for r in rows]
    out = models.lm(role).rollout([r.seq(role) for r in rows], 1, params.temperature, seeds)
    for row, cost in zip(rows, out.forward_tokens):
        row.accounting.add_forward(role, cost)
    return [tokens[0] for tokens in out.tokens], None if out.logprobs is None else [lp[0] for lp in out.logprobs]
