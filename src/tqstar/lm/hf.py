"""The ``transformers`` backend: any causal LM by local path (or hub id), with a prefix KV cache.

The backend alone: prompt formatting is :mod:`tqstar.lm.chat`, loading (paths, devices, adapters, EOS ids)
:mod:`tqstar.lm.loading`, the longest-prefix KV reuse :mod:`tqstar.lm.kvcache`.

Caching, the way vLLM's automatic prefix caching does it but for one process:

* The backend remembers the KV cache of the *last batch of sequences it encoded* (``Rows``: tokens, per-layer
  keys/values ``(R, H, T, D)``, an attention mask ``(R, T)`` and the logits after each row's last token).
* A new call looks up, for every sequence, the stored row that is its longest prefix, gathers those rows
  (expanding one row to many when several sequences share it) and runs only the new suffix tokens. A prefix that
  several sequences of the call share past the stored rows runs once first (a first blockwise decision's k block
  stems share a prompt the baseline never saw: once, not k times; :meth:`~tqstar.lm.kvcache.PrefixKV._encode_shared`).
  Suffixes of unequal length are left-padded *inside* the block; padding positions are masked out and position
  ids count real tokens only, so every row sees exactly its own tokens.
* :meth:`next_logprobs` stores the sequences it was asked about (the committed prefixes, one token longer each
  step); :meth:`rollout` encodes the prefixes' *stems* (each prefix minus its last token) and expands each stem to
  all its rollouts, so the k×N rollouts of a step run as one batch that shares the committed prefix's cache instead
  of re-encoding the prompt per candidate; it then stores every rollout *as run* — its prefix and the tokens it
  generated, but the last — so whatever continues a rollout starts where it ended: the next decision after a sampled
  block (the chosen block is a stored row), the rollouts from each sampled block (CD), the rest of a reused
  greedy rollout.

A call whose sequences do not all extend a stored row is encoded from scratch (left padding); results never
depend on the cache, only speed does.

Sliding-window attention (Mistral-7B-v0.1, Mixtral, Phi-3-mini-4k, StarCoder2: ``config.sliding_window``; Gemma-2/3,
Qwen2 with ``use_sliding_window``: some ``config.layer_types`` are ``"sliding_attention"``) is modelled in *real-token*
positions: once a row is longer than the window, the forward pass gets a 4D additive mask in which the token at
real position ``p`` attends to the real tokens at positions ``p - W + 1 .. p`` only (``W`` = ``sliding_window``,
pads excluded), which is what the model computes on the sequence alone. A cache that padded or gathered rows
cannot use transformers' own sliding mask, which counts cache slots rather than tokens. Models with other layer
types (chunked or linear attention) are refused at load time.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import torch

from .._schema import check_arguments
from ..errors import ConfigError, ModelLoadError
from ..randomness import sample_tokens
from ..text import local_decoding
from .base import (
    ContinuationScores,
    Ending,
    FullVocabLM,
    Prompt,
    RolloutOutput,
    StepOutput,
    TokenIds,
    TopLogprobs,
    rollout_budgets,
    rollout_uniforms,
    sample_excluding,
    tail_sums,
)
from .chat import encode_with_tokenizer
from .kvcache import PrefixKV, Rows, concat_rows, longest_common_prefixes, make_cache
from .loading import DTYPES, check_device, check_model_path, eos_ids, load_pretrained, merge_adapter

#: The most logits one scoring chunk keeps at once (rows × positions × vocabulary floats, ~256 MB in float32).
_SCORE_LOGITS = 1 << 26


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
        parse_special_tokens: let prompt text write control tokens (``<|im_end|>``, ``</s>``); by default they are
            encoded as ordinary text (see :func:`~tqstar.lm.chat.encode_with_tokenizer`).
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
        parse_special_tokens: bool = False,
    ) -> None:
        self.model = model
        self.parse_special_tokens = parse_special_tokens
        self.prefix_cache = prefix_cache
        self.tokenizer = tokenizer
        self.local_decoding = local_decoding(tokenizer)
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.eos_token_ids = eos_ids(getattr(model, "generation_config", None), tokenizer)
        if not self.eos_token_ids:
            raise ModelLoadError(f"model {self.name} defines no EOS token; set eos_token_id in its generation_config")
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        self._windows = attention_windows(model.config, self.name)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_token_ids)
        self._rows: Rows | None = None
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
        allow_download: bool = False,
        parse_special_tokens: bool = False,
    ) -> TransformersLM:
        """Load a causal LM and its tokenizer from a local directory, or a hub id already in the local hub cache.

        ``adapter``: a PEFT (LoRA) adapter directory, merged into the weights at load time (needs ``peft``).
        ``allow_download``: fetch a hub id that is not cached (otherwise nothing is downloaded and a path that does
        not exist fails at once).
        """
        from transformers import AutoModelForCausalLM

        check_arguments(TransformersLM.from_pretrained.__func__, {
            "path": path, "dtype": dtype, "device": device, "chat_template": chat_template,
            "system_prompt": system_prompt, "trust_remote_code": trust_remote_code, "name": name, "adapter": adapter,
            "allow_download": allow_download, "parse_special_tokens": parse_special_tokens})
        if not str(path).strip():
            raise ConfigError("`path` must be a model directory or hub id, got ''", param="path", value=path)
        if dtype not in DTYPES:
            raise ConfigError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}", param="dtype")
        path = str(path)
        check_device(device)
        check_model_path(path, allow_download)
        tokenizer, model = load_pretrained(
            AutoModelForCausalLM, path, what="a causal LM", allow_download=allow_download,
            fix="give a directory with config.json, weights and a tokenizer", dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code)
        if adapter is not None:
            model = merge_adapter(model, str(adapter), path)
        model.to(device).eval()
        return cls(model, tokenizer, name=name or path, chat_template=chat_template, system_prompt=system_prompt,
                   parse_special_tokens=parse_special_tokens)

    def with_prompt_format(self, *, chat_template: bool | str | None = None, system_prompt: str | None = None,
                           name: str | None = None, prefix_cache: bool | None = None,
                           parse_special_tokens: bool | None = None) -> TransformersLM:
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
            parse_special_tokens=self.parse_special_tokens if parse_special_tokens is None else parse_special_tokens,
        )

    # ---- text <-> ids -----------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, *, ending: Ending = "auto") -> list[int]:
        """``prompt``: a str (one user turn) or chat messages; see :func:`~tqstar.lm.chat.encode_with_tokenizer`."""
        return encode_with_tokenizer(self.tokenizer, prompt, self.chat_template, self.system_prompt, self.name,
                                     self.parse_special_tokens, ending)

    def decode(self, ids: TokenIds) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- numbers ----------------------------------------------------------------------------------------
    def next_logprobs(self, seqs: Sequence[TokenIds]) -> StepOutput:
        logits, cost = self._last_logits(seqs)
        return StepOutput(torch.log_softmax(logits, dim=-1).cpu(), cost)  # (B, V)

    def top_logprobs(self, seqs: Sequence[TokenIds], k: int, tail_temperature: float | None = None) -> TopLogprobs:
        """The top k (and the tail's sums) on the model's device; only ``(B, k)`` and ``(B,)`` numbers cross to the
        host."""
        logits, cost = self._last_logits(seqs)
        logprobs = torch.log_softmax(logits, dim=-1)  # (B, V)
        values, ids = logprobs.topk(k, dim=-1)  # (B, k)
        tail = None if tail_temperature is None else tail_sums(logprobs, ids, tail_temperature)
        return TopLogprobs(values.cpu(), ids.cpu(), cost, tail)

    def sample_outside(self, seqs: Sequence[TokenIds], excluded: torch.Tensor, temperature: float,
                       seeds: Sequence[int] | None = None) -> RolloutOutput:
        """:meth:`LanguageModel.sample_outside` on the device, as a side trip: the stored rows are left as they were
        (the tail's draw is for some rows of a step; the next step's :meth:`top_logprobs` extends all of them), so
        rows that are stored cost nothing."""
        stored = self._rows
        logits, cost = self._last_logits(seqs)
        self._rows = stored
        return sample_excluding(torch.log_softmax(logits, dim=-1), excluded, temperature, seeds, cost)

    def _last_logits(self, seqs: Sequence[TokenIds]) -> tuple[torch.Tensor, list[int]]:
        """Float32 logits after each sequence ``(B, V)`` on the device; the sequences become the stored rows."""
        if any(len(s) == 0 for s in seqs):
            raise ConfigError("next_logprobs needs non-empty sequences; every prompt must encode to >= 1 token")
        rows, cost = self._encode_shared([tuple(s) for s in seqs], min_saved=len(seqs))
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
        stem_rows, stem_cost = self._encode_shared(stems, min_saved=len(stems))
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
        ran: list[Rows] = []  # the rows that finished, as run: prefix + generated tokens but the last, their logits
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
                kept = set(keep)
                run = [prefixes[i] + tuple(out[i][:-1]) for i in alive]  # what each row's KV holds
                ran.append(Rows(run, kv, mask, logits).select([j for j in range(len(alive)) if j not in kept]))
                alive = [alive[j] for j in keep]
                if not alive:
                    break
                index = torch.tensor(keep, dtype=torch.long).to(self.device)  # (R',)
                kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
                mask, chosen = mask.index_select(0, index), chosen.index_select(0, index)
                if draws is not None:
                    draws = draws.index_select(0, index)
            feed = chosen
        if ran:
            self._rows = concat_rows(ran)
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
            base = Rows([()] * len(prefixes), None, torch.zeros(len(prefixes), 0, dtype=torch.long,
                                                                  device=self.device), None)
        else:
            index, kept = longest_common_prefixes(stored, prefixes)
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

    @torch.inference_mode()
    def _forward(self, kv, past_mask: torch.Tensor, ids: torch.Tensor, block_mask: torch.Tensor, keep: int = 0):
        """Run ``ids`` ``(R, S)`` after the cached ``kv``; returns last-position logits ``(R, V)`` (``keep`` > 0: the
        last ``keep`` positions' logits ``(R, keep, V)``) and the new KV."""
        full_mask = torch.cat([past_mask, block_mask], dim=1)  # (R, T + S)
        positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # (R, S)
        cache = make_cache(kv)
        out = self.model(
            input_ids=ids,
            attention_mask=self._attention_mask(full_mask, positions),
            position_ids=positions,
            use_cache=True,
            logits_to_keep=max(keep, 1),
            **{self._cache_kwarg: cache},
        )
        new_kv = [(layer.keys, layer.values) for layer in cache.layers]  # the forward pass appended in place
        return (out.logits.float() if keep else out.logits[:, -1].float()), new_kv


    def _attention_mask(self, full_mask: torch.Tensor, positions: torch.Tensor):
        """The 2D padding mask ``(R, T + S)`` for full attention; for a windowed model whose rows outgrow the window,
        4D additive masks ``(R, 1, S, T + S)`` in real-token positions (one per layer type when the types mix)."""
        windows = self._windows
        if windows is None or int(full_mask.sum(dim=1).max()) <= min(w for w in windows.values() if w is not None):
            return full_mask  # no row reaches past its window: plain causal attention is the same
        dtype = self.model.dtype
        masks = {kind: window_mask(full_mask, positions, window, dtype) for kind, window in windows.items()}
        return masks[""] if "" in masks else masks


def attention_windows(config, name: str) -> dict[str, int | None] | None:
    """How far back each layer type attends, in tokens: ``None`` when every layer attends to the whole sequence;
    ``{"": W}`` when every layer has the window ``W``; ``{layer type: W or None}`` when sliding and full layers mix
    (the model then takes a mask per layer type). Raises :class:`ModelLoadError` on layer types it cannot model."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or [])
    unknown = sorted(types - {"full_attention", "sliding_attention"})
    if unknown:
        raise ModelLoadError(f"model {name} has {unknown[0]!r} layers, which the tqstar prefix cache does not model;"
                             " use a model with full or sliding-window attention")
    if not window or (types and "sliding_attention" not in types):
        return None
    if types == {"full_attention", "sliding_attention"}:
        return {"full_attention": None, "sliding_attention": int(window)}
    return {"": int(window)}


def window_mask(full_mask: torch.Tensor, positions: torch.Tensor, window: int | None,
                dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``(R, 1, S, T + S)`` for the last ``S`` columns of ``full_mask`` ``(R, T + S)``.

    Query ``j`` of row ``r`` (real position ``q = positions[r, j]``) attends to key ``c`` iff ``c`` is a real token
    (``full_mask[r, c] = 1``) at real position ``k`` with ``q - window < k <= q`` (``window=None``: ``k <= q``).
    A pad query also attends to itself, so no row of the mask is empty (an empty row would turn into NaN).
    """
    width, steps = full_mask.shape[1], positions.shape[1]
    keys = (full_mask.cumsum(dim=1) - 1)[:, None, :]  # (R, 1, T + S) real position of every key
    query = positions[:, :, None]  # (R, S, 1)
    allowed = full_mask.bool()[:, None, :] & (keys <= query)  # (R, S, T + S)
    if window is not None:
        allowed &= keys > query - window
    columns = torch.arange(width, device=full_mask.device)
    allowed |= columns[None, None, :] == columns[width - steps:][None, :, None]  # the query itself
    mask = torch.zeros(allowed.shape, dtype=dtype, device=full_mask.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]  # (R, 1, S, T + S)



