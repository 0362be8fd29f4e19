"""The ``transformers`` backend: any causal LM by local path (or hub id), with a prefix KV cache.

Caching, the way vLLM's automatic prefix caching does it but for one process:

* The backend remembers the KV cache of the *last batch of sequences it encoded* (``_Rows``: tokens, per-layer
  keys/values ``(R, H, T, D)``, an attention mask ``(R, T)`` and the logits after each row's last token).
* A new call looks up, for every sequence, the stored row that is its longest prefix, gathers those rows
  (expanding one row to many when several sequences share it) and runs only the new suffix tokens.
  Suffixes of unequal length are left-padded *inside* the block; padding positions are masked out and position
  ids count real tokens only, so every row sees exactly its own tokens.
* :meth:`next_logprobs` stores the sequences it was asked about (the committed prefixes, one token longer each
  step); :meth:`rollout` stores the prefixes' *stems* (each prefix minus its last token) and then expands each
  stem to all its rollouts, so the k×N rollouts of a step run as one batch that shares the committed prefix's
  cache instead of re-encoding the prompt per candidate.

A call whose sequences do not all extend a stored row is encoded from scratch (left padding); results never
depend on the cache, only speed does.

Sliding-window attention layers are not modelled by the cache (they are treated as full attention); models
that use them are refused at load time.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ConfigError, ModelLoadError
from .base import (
    FullVocabLM,
    RolloutOutput,
    StepOutput,
    TokenIds,
    _generator,
    rollout_budgets,
    sample_tokens,
)
from .kvcache import PrefixKV, _make_cache, _Rows

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TransformersLM(FullVocabLM, PrefixKV):
    """A ``transformers`` causal LM behind the :class:`LanguageModel` protocol.

    Args:
        model: a loaded ``AutoModelForCausalLM`` (eval mode).
        tokenizer: its tokenizer.
        name: shown in messages (defaults to the model's path).
        chat_template: ``True`` to format prompts with the tokenizer's chat template when it has one, ``False``
            for raw text, or a Jinja template string that overrides the tokenizer's.
        system_prompt: a system message placed before the user prompt (chat formatting only). A prompted
            baseline (the SFT weights with an aligning system prompt) is a legitimate cheap aligned model.
        prefix_cache: keep and reuse the KV cache across calls (default). ``False`` re-encodes every sequence
            in full on every call — the same results, for measuring what the cache saves.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str | None = None,
        chat_template: bool | str = True,
        system_prompt: str | None = None,
        prefix_cache: bool = True,
    ) -> None:
        self.model = model
        self.prefix_cache = prefix_cache
        self.tokenizer = tokenizer
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.eos_token_ids = eos_ids(getattr(model, "generation_config", None), tokenizer)
        if not self.eos_token_ids:
            raise ModelLoadError(f"model {self.name} defines no EOS token; set eos_token_id in its generation_config")
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        layer_types = getattr(model.config, "layer_types", None) or []
        if any("sliding" in str(t) for t in layer_types) or getattr(model.config, "use_sliding_window", False):
            raise ModelLoadError(
                f"model {self.name} uses sliding-window attention, which the tqstar prefix cache does not model;"
                " use a full-attention model"
            )
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_token_ids)
        self._rows: _Rows | None = None
        # transformers >= 5.x names the cache argument `cache`; older releases `past_key_values`.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # ---- loading ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        chat_template: bool | str = True,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
        name: str | None = None,
        adapter: str | os.PathLike | None = None,
    ) -> TransformersLM:
        """Load a causal LM and its tokenizer from a local directory (or a hub id when a hub is reachable).

        ``adapter``: a PEFT (LoRA) adapter directory, merged into the weights at load time (needs ``peft``).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise ConfigError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}")
        path = str(path)
        _check_model_path(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a causal LM from {path!r} ({exc}); give a directory with"
                                 " config.json, weights and a tokenizer") from exc
        if adapter is not None:
            model = _merge_adapter(model, str(adapter))
        model.to(device).eval()
        return cls(model, tokenizer, name=name or path, chat_template=chat_template, system_prompt=system_prompt)

    def with_prompt_format(self, *, chat_template: bool | str | None = None, system_prompt: str | None = None,
                           name: str | None = None, prefix_cache: bool | None = None) -> TransformersLM:
        """A sibling that shares the weights but formats prompts differently (its own prefix cache).

        ``None`` keeps this model's setting; ``system_prompt=""`` removes the system prompt.
        """
        return TransformersLM(
            self.model,
            self.tokenizer,
            name=name or self.name,
            chat_template=self.chat_template if chat_template is None else chat_template,
            system_prompt=self.system_prompt if system_prompt is None else (system_prompt or None),
            prefix_cache=self.prefix_cache if prefix_cache is None else prefix_cache,
        )

    # ---- text <-> ids -----------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        return encode_with_tokenizer(self.tokenizer, prompt, self.chat_template, self.system_prompt, self.name)

    def decode(self, ids: TokenIds) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- numbers ----------------------------------------------------------------------------------------
    def next_logprobs(self, seqs: Sequence[TokenIds]) -> StepOutput:
        if any(len(s) == 0 for s in seqs):
            raise ConfigError("next_logprobs needs non-empty sequences; every prompt must encode to >= 1 token")
        rows, cost = self._encode([tuple(s) for s in seqs])
        self._rows = rows
        assert rows.last_logits is not None
        return StepOutput(torch.log_softmax(rows.last_logits.float(), dim=-1).cpu(), cost)

    def rollout(
        self,
        prefixes: Sequence[TokenIds],
        max_new_tokens: int | Sequence[int],
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> RolloutOutput:
        if not prefixes:
            return RolloutOutput([], [])
        budgets = rollout_budgets(max_new_tokens, len(prefixes))
        prefixes = [tuple(p) for p in prefixes]
        if any(len(p) == 0 for p in prefixes):
            raise ConfigError("rollout needs non-empty prefixes; every prompt must encode to >= 1 token")
        stems = list(dict.fromkeys(p[:-1] for p in prefixes))
        stem_rows, stem_cost = self._encode(stems)
        self._rows = stem_rows
        stem_index = {s: i for i, s in enumerate(stems)}
        rows = stem_rows.select([stem_index[p[:-1]] for p in prefixes])
        cost = [0] * len(prefixes)
        charged: set[tuple[int, ...]] = set()
        for i, p in enumerate(prefixes):  # a stem's encoding cost goes to the first prefix that uses it
            if p[:-1] not in charged:
                charged.add(p[:-1])
                cost[i] += stem_cost[stem_index[p[:-1]]]

        generator = _generator(seed, self.device)
        out: list[list[int]] = [[] for _ in prefixes]
        alive = [i for i in range(len(prefixes)) if budgets[i] > 0]
        if len(alive) < len(prefixes):
            rows = rows.select(alive)
        kv, mask = rows.kv, rows.mask
        feed = torch.tensor([prefixes[i][-1] for i in alive], dtype=torch.long, device=self.device)  # (R,)
        budget = torch.tensor([budgets[i] for i in alive], device=self.device)  # (R,)
        eos = torch.tensor(sorted(self.eos_token_ids), device=self.device)
        for step in range(max(budgets)):
            if not alive:
                break
            ones = torch.ones(len(alive), 1, dtype=mask.dtype, device=self.device)
            logits, kv = self._forward(kv, mask, feed[:, None], ones)  # (R, V)
            mask = torch.cat([mask, ones], dim=1)
            chosen = sample_tokens(logits, temperature, generator)  # (R,)
            for row, i in enumerate(alive):
                cost[i] += 1
                out[i].append(int(chosen[row]))
            finished = torch.isin(chosen, eos) | (budget <= step + 1)
            if bool(finished.any()):
                keep = (~finished).nonzero().squeeze(-1)
                alive = [alive[j] for j in keep.tolist()]
                if not alive:
                    break
                kv = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in kv]
                mask, chosen, budget = mask.index_select(0, keep), chosen.index_select(0, keep), budget.index_select(0, keep)
            feed = chosen
        return RolloutOutput(out, cost)

    def reset_cache(self) -> None:
        """Forget the stored prefix cache (frees its memory; results are unaffected)."""
        self._rows = None

    # ---- internals --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, kv, past_mask: torch.Tensor, ids: torch.Tensor, block_mask: torch.Tensor):
        """Run ``ids`` ``(R, S)`` after the cached ``kv``; returns last-position logits ``(R, V)`` and the new KV."""
        full_mask = torch.cat([past_mask, block_mask], dim=1)  # (R, T + S)
        positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # (R, S)
        cache = _make_cache(kv)
        out = self.model(
            input_ids=ids,
            attention_mask=full_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        new_kv = [(layer.keys, layer.values) for layer in cache.layers]  # the forward pass appended in place
        return out.logits[:, -1].float(), new_kv


def encode_with_tokenizer(tokenizer, prompt: str, chat_template: bool | str, system_prompt: str | None,
                          name: str) -> list[int]:
    """The ids that start a response to ``prompt``: the tokenizer's chat template (or ``chat_template`` when it is a
    Jinja string) with an optional system message, else the raw text (system prompt first, blank line between)."""
    tok, template = tokenizer, chat_template
    if template and (isinstance(template, str) or getattr(tok, "chat_template", None)):
        messages = [{"role": "user", "content": prompt}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        ids = tok.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            chat_template=template if isinstance(template, str) else None,
            return_dict=False,
        )
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
    else:
        text = f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
        ids = tok(text, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ConfigError(f"prompt {prompt!r} encodes to no tokens for {name}; give a non-empty prompt")
    return list(ids)


def eos_ids(gen, tokenizer) -> frozenset[int]:
    """The EOS ids of a model: its generation config's (``gen``, may be ``None``) and its tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def check_adapter_dir(adapter: str, shown: str | None = None) -> None:
    """Raise :class:`ModelLoadError` unless ``adapter`` is a PEFT adapter directory (``shown``: the name to print)."""
    if not (Path(adapter) / "adapter_config.json").exists():
        raise ModelLoadError(f"adapter directory {shown or repr(adapter)} has no adapter_config.json; give a PEFT adapter"
                             " directory")


def _merge_adapter(model, adapter: str):
    check_adapter_dir(adapter)
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelLoadError("loading an adapter needs peft; pip install 'tqstar[train]'") from exc
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def _check_model_path(path: str) -> None:
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelLoadError(f"model directory {path!r} has no config.json; give a transformers model directory")
        return
    if path.count("/") != 1 or path.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {path!r} does not exist; give a local model directory or a hub id"
                             " such as 'org/name'")
