"""Language models: the protocol every backend implements, the backends, and what may stand for a model.

* :mod:`~tqstar.lm.base` — the protocol (:class:`~tqstar.lm.base.LanguageModel`: next-token log-probs, rollouts,
  likelihoods of given continuations), its output types and its correct, slow defaults;
* backends: :mod:`~tqstar.lm.hf` (``transformers``, with a prefix KV cache: :mod:`~tqstar.lm.kvcache`),
  :mod:`~tqstar.lm.remote` (an OpenAI-compatible server), :mod:`~tqstar.lm.tabular` (exact tabular models);
* :mod:`~tqstar.lm.chat` — prompt formatting for every backend; :mod:`~tqstar.lm.loading` — loading checks;
* :mod:`~tqstar.lm.bridge` — a baseline with another tokenizer, through text;
* :mod:`~tqstar.lm.spec` — :class:`ModelSpec` and :func:`load`, the front door: a spec in, a model out.

A new backend subclasses :class:`~tqstar.lm.base.LanguageModel` (or ``FullVocabLM``) and passes
:func:`tqstar.testing.contract.check_language_model`.
"""

from __future__ import annotations

from .spec import ModelSpec, load

__all__ = ["ModelSpec", "load"]
