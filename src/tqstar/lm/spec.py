"""What may stand for a model, and loading it: :class:`ModelSpec` (checked before anything loads) and :func:`load`.

A spec is a local directory, a hub id in the local hub cache, a built-in name (``smollm2``, ``qwen2.5-coder``:
:mod:`tqstar.builtin.models`) with an optional LoRA adapter merged at load time, or a model on an OpenAI-compatible
server, ``openai:<base_url>#<served_name>`` (:mod:`tqstar.lm.remote`). Two roles given the same local weights (an SFT
model and a prompted baseline) share one copy of them (:func:`load` with ``shared``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._http import JsonClient
from .._schema import string_or_mapping
from ..builtin.models import BUILTIN_MODELS, check_builtin, resolve_adapter, resolve_model
from ..errors import ConfigError
from .base import LanguageModel
from .hf import TransformersLM
from .loading import DTYPES, check_adapter_dir, check_device, check_model_path
from .remote import RemoteLM, is_remote_spec, parse_spec

#: Local weights already loaded, by :attr:`ModelSpec.weights` (what two roles may share).
Shared = dict[tuple, TransformersLM]


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM: a local path (or hub id, or ``smollm2``) with an optional LoRA adapter merged at load time,
    dtype and device; or a model on a server, ``openai:<base_url>#<served_name>`` (see :mod:`tqstar.lm.remote`),
    with an optional local ``tokenizer`` directory and the connection settings. Prompt formatting for both.
    ``allow_download``: fetch a hub id that is not in the local hub cache (otherwise nothing is downloaded).
    ``parse_special_tokens``: let prompt text write control tokens (``<|im_end|>``, ``</s>``); off, they are text."""

    path: str
    adapter: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    chat_template: bool | str = True
    system_prompt: str | None = None
    tokenizer: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 4
    max_in_flight: int = 8
    allow_download: bool = False
    parse_special_tokens: bool = False

    @property
    def remote(self) -> bool:
        return is_remote_spec(self.path)

    @property
    def weights(self) -> tuple:
        """What identifies a local model's weights: two specs that agree here can share one loaded copy."""
        return (self.path, self.adapter, self.dtype, self.device)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"`dtype` must be one of {', '.join(DTYPES)}, got {self.dtype!r}", param="dtype")
        if self.remote:
            url, _ = parse_spec(self.path)
            JsonClient(url, timeout=self.timeout, retries=self.retries,
                       max_in_flight=self.max_in_flight)  # checks the settings; connects later
            if self.adapter is not None:
                raise ConfigError(f"adapter {self.adapter!r} cannot be merged into the remote model {self.path}; serve"
                                  " it with the server (vLLM: --enable-lora --lora-modules NAME=DIR) and name it after '#'")
            if self.tokenizer is not None and self.tokenizer not in BUILTIN_MODELS:
                check_model_path(self.tokenizer)
            return
        if self.tokenizer is not None:
            raise ConfigError(f"`tokenizer` is for remote models (openai:...); {self.path!r} loads its own",
                              param="tokenizer")
        if self.path in BUILTIN_MODELS:
            check_builtin(self.path)  # installed? (converted on first load)
        else:
            check_model_path(self.path, self.allow_download)
        check_device(self.device)
        if self.adapter is not None:
            check_adapter_dir(resolve_adapter(self.adapter), repr(self.adapter))

    @classmethod
    def parse(cls, value: Any, what: str) -> ModelSpec | None:
        """A spec from a config value (a path, or a mapping with a ``path`` key; ``None`` stays ``None``); ``what`` is
        its key, named in messages."""
        values = string_or_mapping(value, cls, what, key="path", plain="a path",
                                   fix="give the model as {path: DIR} or as a plain path")
        return None if values is None else cls(**values)


def load(spec: ModelSpec, name: str | None = None, *, shared: Shared | None = None) -> LanguageModel:
    """Load the model ``spec`` names (``name`` is shown in messages; default: the spec's path).

    ``shared``: local weights loaded so far, by :attr:`ModelSpec.weights`; a spec whose weights are there gets a
    sibling on the same weights with its own prompt format (:meth:`TransformersLM.with_prompt_format`: its own chat
    template and system prompt, ``None`` meaning none), and newly loaded weights are added.
    """
    name = name or spec.path
    if spec.remote:
        url, served = parse_spec(spec.path)
        tokenizer = resolve_model(spec.tokenizer) if spec.tokenizer else None
        return RemoteLM(url, served, tokenizer=tokenizer, chat_template=spec.chat_template,
                        system_prompt=spec.system_prompt, api_key_env=spec.api_key_env, timeout=spec.timeout,
                        retries=spec.retries, concurrency=spec.max_in_flight, name=name,
                        parse_special_tokens=spec.parse_special_tokens)
    shared = {} if shared is None else shared
    if spec.weights in shared:  # same weights, maybe another prompt format: share them
        return shared[spec.weights].with_prompt_format(chat_template=spec.chat_template,
                                                       system_prompt=spec.system_prompt or "", name=name,
                                                       parse_special_tokens=spec.parse_special_tokens)
    lm = TransformersLM.from_pretrained(
        resolve_model(spec.path), adapter=resolve_adapter(spec.adapter), dtype=spec.dtype, device=spec.device,
        chat_template=spec.chat_template, system_prompt=spec.system_prompt, name=name,
        allow_download=spec.allow_download, parse_special_tokens=spec.parse_special_tokens)
    shared[spec.weights] = lm
    return lm
