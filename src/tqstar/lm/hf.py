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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError
from ..randomness import sample_tokens
from .base import (
    ContinuationScores,
    FullVocabLM,
    RolloutOutput,
    StepOutput,
    TokenIds,
    TopLogprobs,
    rollout_budgets,
    rollout_uniforms,
)

#: The most logits one scoring chunk keeps at once (rows × positions × vocabulary floats, ~256 MB in float32).
_SCORE_LOGITS = 1 << 26
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class _Rows:
    """Encoded sequences: tokens, KV per layer ``(R, H, T, D)``, mask ``(R, T)``, last logits ``(R, V)``."""

    tokens: list[tuple[int, ...]]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    mask: torch.Tensor
    last_logits: torch.Tensor | None

    def token_array(self) -> np.ndarray:
        """Stored tokens as ``(R, T)`` int64, right-padded with -1 (for prefix matching)."""
        width = max((len(t) for t in self.tokens), default=0)
        table = np.full((len(self.tokens), max(width, 1)), -1, dtype=np.int64)
        for i, t in enumerate(self.tokens):
            table[i, :len(t)] = t
        return table

    def keep_first(self, kept: Sequence[int]) -> _Rows:
        """Each row cut to its first ``kept[i]`` tokens: later positions are masked out, and columns masked in
        every row are dropped. Rows that keep everything keep their last logits."""
        if all(n == len(t) for n, t in zip(kept, self.tokens)):
            return self
        limit = torch.as_tensor(list(kept), device=self.mask.device)[:, None]
        mask = self.mask * (self.mask.cumsum(dim=1) <= limit)  # (R, T)
        cols = mask.any(dim=0).nonzero().squeeze(-1)
        kv = None
        if self.kv is not None and len(cols):
            kv = [(k.index_select(2, cols), v.index_select(2, cols)) for k, v in self.kv]
        tokens = [t[:n] for t, n in zip(self.tokens, kept)]
        return _Rows(tokens, kv, mask.index_select(1, cols), self.last_logits)

    def select(self, idx: Sequence[int]) -> _Rows:
        index = torch.as_tensor(list(idx), dtype=torch.long, device=self.mask.device)
        kv = None if self.kv is None else [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv]
        last = None if self.last_logits is None else self.last_logits.index_select(0, index)
        return _Rows([self.tokens[i] for i in idx], kv, self.mask.index_select(0, index), last)


class TransformersLM(FullVocabLM):
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
        logits, cost = self._last_logits(seqs)
        return StepOutput(torch.log_softmax(logits, dim=-1).cpu(), cost)  # (B, V)

    def top_logprobs(self, seqs: Sequence[TokenIds], k: int) -> TopLogprobs:
        """The top k on the model's device; only ``(B, k)`` numbers cross to the host."""
        logits, cost = self._last_logits(seqs)
        values, ids = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)  # (B, k)
        return TopLogprobs(values.cpu(), ids.cpu(), cost)

    def _last_logits(self, seqs: Sequence[TokenIds]) -> tuple[torch.Tensor, list[int]]:
        """Float32 logits after each sequence ``(B, V)`` on the device; the sequences become the stored rows."""
        if any(len(s) == 0 for s in seqs):
            raise ConfigError("next_logprobs needs non-empty sequences; every prompt must encode to >= 1 token")
        rows, cost = self._encode([tuple(s) for s in seqs])
        self._rows = rows
        assert rows.last_logits is not None
        return rows.last_logits.float(), cost

    def rollout(
        self,
        prefixes: Sequence[TokenIds],
        max_new_tokens: int | Sequence[int],
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> RolloutOutput:
        if not prefixes:
            return RolloutOutput([], [])
        budgets = rollout_budgets(max_new_tokens, len(prefixes))
        prefixes = [tuple(p) for p in prefixes]
        if any(len(p) == 0 for p in prefixes):
            raise ConfigError("rollout needs non-empty prefixes; every prompt must encode to >= 1 token")
        draws = rollout_uniforms(seeds, len(prefixes), max(budgets), temperature, self.device)  # (P, L) | None
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

        out: list[list[int]] = [[] for _ in prefixes]
        logprobs: list[list[float]] = [[] for _ in prefixes]
        alive = [i for i in range(len(prefixes)) if budgets[i] > 0]
        # Store the prefixes themselves after the first forward when that costs no more rows than the stems
        # (one prefix per stem, as in plain decoding): the next call's stem is then a stored row, run for free.
        store_prefixes = len(alive) == len(prefixes) == len(stems)
        if len(alive) < len(prefixes):
            rows = rows.select(alive)
        if draws is not None:
            draws = draws[alive]  # (R, L)
        kv, mask = rows.kv, rows.mask
        feed = torch.tensor([prefixes[i][-1] for i in alive], dtype=torch.long).to(self.device)  # (R,)
        eos = torch.tensor(sorted(self.eos_token_ids), dtype=torch.long).to(self.device)
        for t in range(max(budgets)):
            if not alive:
                break
            ones = torch.ones(len(alive), 1, dtype=mask.dtype, device=self.device)
            logits, kv = self._forward(kv, mask, feed[:, None], ones)  # (R, V)
            mask = torch.cat([mask, ones], dim=1)
            if t == 0 and store_prefixes:
                self._rows = _Rows(list(prefixes), kv, mask, logits)
            chosen = sample_tokens(logits, temperature, None if draws is None else draws[:, t])  # (R,)
            finished = torch.isin(chosen, eos)  # (R,)
            chosen_lp = logits.gather(-1, chosen[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (R,)
            # one device→host transfer per step: the chosen tokens, which rows hit EOS, their log-probs
            host = torch.stack([chosen.double(), finished.double(), chosen_lp.double()]).tolist()
            keep = []
            for row, i in enumerate(alive):
                cost[i] += 1
                out[i].append(int(host[0][row]))
                logprobs[i].append(host[2][row])
                if not host[1][row] and len(out[i]) < budgets[i]:
                    keep.append(row)
            if len(keep) < len(alive):
                alive = [alive[j] for j in keep]
                if not alive:
                    break
                index = torch.tensor(keep, dtype=torch.long).to(self.device)  # (R',)
                kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
                mask, chosen = mask.index_select(0, index), chosen.index_select(0, index)
                if draws is not None:
                    draws = draws.index_select(0, index)
            feed = chosen
        return RolloutOutput(out, cost, logprobs)

    def score_continuations(self, prefixes: Sequence[TokenIds],
                            continuations: Sequence[TokenIds]) -> ContinuationScores:
        """log π(y_j | prefix, y_<j) per continuation token, every sequence run once from the prefix cache.

        Each ``prefix + y`` starts from the stored row sharing the longest prefix with ``prefix`` (the committed
        sequence of the current step, so the k×N rollouts of a step cost their own tokens only) and runs the rest
        but its last token, keeping the logits at every position; a row stored as exactly ``prefix`` gives the first
        position's logits for free. Rows go through in chunks that bound the ``(R, S, V)`` logits. The stored rows
        are left as they were (scoring is a side trip).
        """
        assert len(prefixes) == len(continuations), "one continuation per prefix"
        if any(len(p) == 0 for p in prefixes):
            raise ConfigError("score_continuations needs non-empty prefixes; every prompt must encode to >= 1 token")
        values: list[list[float]] = [[] for _ in prefixes]
        cost = [0] * len(prefixes)
        todo = [i for i, y in enumerate(continuations) if len(y) > 0]
        longest = max((len(continuations[i]) for i in todo), default=1)
        chunk = max(1, _SCORE_LOGITS // (longest * self.vocab_size))
        for start in range(0, len(todo), chunk):
            rows = todo[start:start + chunk]
            got, ran = self._score_rows([tuple(prefixes[i]) for i in rows], [tuple(continuations[i]) for i in rows])
            for i, lps, n in zip(rows, got, ran):
                values[i], cost[i] = lps, n
        return ContinuationScores(values, cost)

    @torch.inference_mode()
    def _score_rows(self, prefixes: list[tuple[int, ...]], conts: list[tuple[int, ...]]):
        stored = self._rows if self.prefix_cache else None
        if stored is None:
            kept = [0] * len(prefixes)
            base = _Rows([()] * len(prefixes), None, torch.zeros(len(prefixes), 0, dtype=torch.long,
                                                                  device=self.device), None)
        else:
            index, kept = _longest_common_prefixes(stored, prefixes)
            base = stored.select(index).keep_first(kept)
        # Row i feeds (prefix + y)[kept_i : -1]. When the stored row is exactly the prefix (kept_i = len(prefix)),
        # its last logits predict y_0 and the block's outputs predict y_1..; else the block's last len(y) outputs
        # predict y_0... Left padding right-aligns those outputs, so the last `keep` positions hold them all.
        feeds = [(p + y)[n:-1] for p, y, n in zip(prefixes, conts, kept)]
        stored_first = [n == len(p) for p, n in zip(prefixes, kept)]
        needed = [len(y) - f for y, f in zip(conts, stored_first)]
        keep, width = max(needed), max(len(f) for f in feeds)
        targets = torch.zeros(len(conts), max(keep, 1), dtype=torch.long)  # (R, keep): the token each output predicts
        for r, (y, f, m) in enumerate(zip(conts, stored_first, needed)):
            if m:
                targets[r, keep - m:] = torch.tensor(y[int(f):])
        out = [[] for _ in conts]
        if any(stored_first):
            assert base.last_logits is not None
            first = torch.log_softmax(base.last_logits.float(), dim=-1)  # (R, V)
            for r in (r for r, f in enumerate(stored_first) if f):
                out[r].append(float(first[r, conts[r][0]]))
        if keep:
            ids, block_mask = self._left_pad(feeds, width)
            logits, _ = self._forward(base.kv, base.mask, ids, block_mask, keep=keep)  # (R, keep, V)
            chosen = torch.log_softmax(logits, dim=-1).gather(-1, targets.to(self.device)[..., None])  # (R, keep, 1)
            host = chosen.squeeze(-1).double().tolist()  # (R, keep)
            for r, m in enumerate(needed):
                out[r].extend(host[r][keep - m:] if m else [])
        return out, [len(f) for f in feeds]

    def reset_cache(self) -> None:
        """Forget the stored prefix cache (frees its memory; results are unaffected)."""
        self._rows = None

    # ---- internals --------------------------------------------------------------------------------------
    def _encode(self, seqs: list[tuple[int, ...]]) -> tuple[_Rows, list[int]]:
        """Encode ``seqs`` reusing the stored rows; returns the rows and per-sequence tokens run.

        Each sequence starts from the stored row sharing its longest common prefix (the row's tail beyond it is
        masked out), and only the rest of the sequence is run.
        """
        stored = self._rows
        if stored is None or not self.prefix_cache:
            return self._prefill(seqs)
        rows, kept = _longest_common_prefixes(stored, seqs)
        base = stored.select(rows).keep_first(kept)
        suffixes = [s[n:] for s, n in zip(seqs, kept)]
        width = max(len(s) for s in suffixes)
        if width == 0:  # every sequence is exactly a stored row: its last logits are stored too
            return _Rows(list(seqs), base.kv, base.mask, base.last_logits), [0] * len(seqs)
        ids, block_mask = self._left_pad(suffixes, width)
        logits, kv = self._forward(base.kv, base.mask, ids, block_mask)
        has_new = torch.tensor([len(s) > 0 for s in suffixes], device=self.device)[:, None]
        last = logits if base.last_logits is None else torch.where(has_new, logits, base.last_logits)
        mask = torch.cat([base.mask, block_mask], dim=1)
        return _Rows(list(seqs), kv, mask, last), [len(s) for s in suffixes]

    def _prefill(self, seqs: list[tuple[int, ...]]) -> tuple[_Rows, list[int]]:
        width = max(len(s) for s in seqs)
        empty = torch.zeros(len(seqs), 0, dtype=torch.long, device=self.device)
        if width == 0:
            return _Rows(list(seqs), None, empty, None), [0] * len(seqs)
        ids, mask = self._left_pad(seqs, width)
        logits, kv = self._forward(None, empty, ids, mask)
        return _Rows(list(seqs), kv, mask, logits), [len(s) for s in seqs]

    def _left_pad(self, seqs: Sequence[Sequence[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def _forward(self, kv, past_mask: torch.Tensor, ids: torch.Tensor, block_mask: torch.Tensor, keep: int = 0):
        """Run ``ids`` ``(R, S)`` after the cached ``kv``; returns last-position logits ``(R, V)`` (``keep`` > 0: the
        last ``keep`` positions' logits ``(R, keep, V)``) and the new KV."""
        full_mask = torch.cat([past_mask, block_mask], dim=1)  # (R, T + S)
        positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # (R, S)
        cache = _make_cache(kv)
        out = self.model(
            input_ids=ids,
            attention_mask=full_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=max(keep, 1),
            **{self._cache_kwarg: cache},
        )
        new_kv = [(layer.keys, layer.values) for layer in cache.layers]  # the forward pass appended in place
        return (out.logits.float() if keep else out.logits[:, -1].float()), new_kv


def _make_cache(kv):
    """A ``DynamicCache`` holding ``kv`` without copying it (the forward pass appends by concatenation)."""
    from transformers import DynamicCache

    if kv is None:
        return DynamicCache()
    cache = DynamicCache(ddp_cache_data=[(None, None)] * len(kv))
    for layer, (k, v) in zip(cache.layers, kv):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


def _longest_common_prefixes(stored: _Rows, seqs: list[tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """Per sequence, the stored row with the longest common prefix and how many of its tokens to keep.

    A kept prefix never covers a whole sequence unless the row *is* that sequence (then its stored last logits
    are valid); otherwise the sequence's last token is re-run so its logits exist.
    """
    table = stored.token_array()  # (R, T) right-padded with -1
    rows, kept = [], []
    for start in range(0, len(seqs), 64):  # bounded (B, R, T) comparisons
        chunk = seqs[start:start + 64]
        width = min(table.shape[1], max(len(s) for s in chunk))
        query = np.full((len(chunk), width), -2, dtype=np.int64)
        for i, s in enumerate(chunk):
            query[i, :min(len(s), width)] = s[:width]
        same = query[:, None, :] == table[None, :, :width]  # (b, R, width)
        lcp = np.cumprod(same, axis=2).sum(axis=2)  # (b, R)
        best = lcp.argmax(axis=1)
        for i, s in enumerate(chunk):
            row, n = int(best[i]), int(lcp[i, best[i]])
            if n == len(s) and len(stored.tokens[row]) != n:
                n -= 1
            rows.append(row)
            kept.append(n)
    return rows, kept


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
