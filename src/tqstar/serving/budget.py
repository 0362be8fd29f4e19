"""What one request may cost, checked when it is admitted: the tokens one of its steps rolls out and its KV memory.

The scheduler splits a heavy step between model forward passes (:mod:`~tqstar.serving.scheduler`), but one forward
pass cannot be split, and memory is not time-shared: so both are capped per request, before any decoding.

* **Tokens per step** (``limits.max_step_tokens``): the tokens one decoder step of the request generates —
  ``k × n_rollouts × min(rollout_len, max_tokens)`` for a method that rolls candidates out, ``bon_n × max_tokens``
  for best-of-N (it samples whole responses in its one step), else ``k`` or 1: how much work one step is.
* **Rows per forward pass** (``limits.max_step_rows``): the sequences the request's step runs through a model at
  once — ``k × n_rollouts`` rollouts, ``bon_n`` samples, ``k`` scored candidates. One forward pass is the unit the
  scheduler cannot split, so this bounds how long any other request may wait for this one.
* **KV memory** (``limits.max_request_kv_mb``): for each local model the method runs, the rows it keeps in that
  model's cache (the committed sequence, plus a copy of the prefix per rollout or scored candidate) times their
  length (prompt + ``max_tokens``) times the model's KV bytes per token (2 × layers × KV heads × head size × dtype
  size, from its config). A served model's memory is its server's business and counts 0 here.

:func:`largest_budget` is the most response tokens under the KV cap (and, for best-of-N, whose step is its samples,
under the step cap); a request without ``max_tokens`` gets at most that, so it never fails on a cap through a
budget it did not choose.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..engine import Engine
from ..lm.base import LanguageModel
from ..params import DecodeParams


def kv_bytes_per_token(lm: LanguageModel | None) -> int:
    """KV-cache bytes one token takes in ``lm`` (a local ``transformers`` model); 0 for a served or tabular model."""
    module = getattr(lm, "model", None)
    config = getattr(module, "config", None)
    if config is None or not hasattr(module, "dtype"):
        return 0
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "num_hidden_layers", 0)
    heads = getattr(config, "num_attention_heads", 0)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0)
    return 2 * layers * kv_heads * head_dim * module.dtype.itemsize


def cache_rows(params: DecodeParams) -> dict[str, int]:
    """Rows the method keeps in each model's cache during one step (by role)."""
    row = params.method_row
    rows = {"sft": 1}  # the committed sequence (plain decoding of the SFT model: that is all)
    if row.kind == "plain":
        rows[row.rolls] = 1  # the baseline's own sequence (the SFT model's gives the KL)
    elif row.kind == "best-of-n":
        rows = {params.bon_policy: params.bon_n}  # the samples, nothing else
    elif row.kind == "token":
        candidates = params.k * (params.n_rollouts if row.rolls else 1)
        if row.rolls:
            rows[row.rolls] = rows.get(row.rolls, 0) + candidates
        if row.likelihoods:  # both models score the candidates' (or rollouts') tokens
            for role in ("sft", "baseline"):
                rows[role] = rows.get(role, 0) + candidates
    return rows


def step_rows(params: DecodeParams) -> int:
    """The most sequences one forward pass of the request's step runs (the largest cache row count)."""
    return max(cache_rows(params).values())


def step_tokens(params: DecodeParams, budget: int) -> int:
    """Tokens one decoder step of a request with ``budget`` response tokens generates (see the module docstring)."""
    row = params.method_row
    if row.kind == "best-of-n":
        return params.bon_n * budget
    if params.rolls_out:
        return params.k * params.n_rollouts * min(params.rollout_len, budget)
    return params.k if row.kind == "token" else 1


def kv_bytes(engine: Engine, params: DecodeParams, prompt_tokens: Mapping[str, int], budget: int) -> int:
    """KV-cache bytes the request keeps at its longest: Σ over models of rows × (prompt + budget) × bytes/token."""
    total = 0
    for role, rows in cache_rows(params).items():
        lm = engine.models.sft if role == "sft" else engine.models.baseline
        length = prompt_tokens.get(role, prompt_tokens["sft"]) + budget
        total += rows * length * kv_bytes_per_token(lm)
    return total


def largest_budget(engine: Engine, params: DecodeParams, prompt_tokens: Mapping[str, int], max_step_tokens: int,
                   max_kv_bytes: float) -> int:
    """The most response tokens under both caps (0 when even one token is over: the prompt alone is too costly)."""
    fixed, per_token = kv_bytes(engine, params, prompt_tokens, 0), 0
    for role, rows in cache_rows(params).items():
        per_token += rows * kv_bytes_per_token(engine.models.sft if role == "sft" else engine.models.baseline)
    budget = 10**9 if per_token == 0 else int((max_kv_bytes - fixed) // per_token)
    if params.method_row.kind == "best-of-n":  # its step is its whole samples
        budget = min(budget, max_step_tokens // params.bon_n)
    return max(0, budget)
