"""Loading ``transformers`` models the way tqstar does it: offline unless asked, quietly, checked before use.

Shared by the LM backend (:mod:`tqstar.lm.hf`), the reward-model backend (:mod:`tqstar.reward.hf`), the remote
backend's local tokenizer (:mod:`tqstar.lm.remote`) and the model specs (:mod:`tqstar.lm.spec`), which check paths,
devices and adapters before anything loads:

* :func:`check_model_path`, :func:`check_device`, :func:`check_adapter_dir` — fail at once, in one sentence;
* :func:`load_pretrained` — ``(tokenizer, model)``, refused when a weight would be initialised at random;
  :func:`merge_adapter` merges a LoRA adapter; :func:`quiet_loading` keeps ``transformers`` from printing;
* :data:`DTYPES` and :func:`eos_ids` (a model's EOS ids from its generation config and tokenizer).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ConfigError, ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def merge_adapter(model, adapter: str, base: str):
    check_adapter_dir(adapter)
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelLoadError("loading an adapter needs peft; pip install 'tqstar[train]'") from exc
    try:
        with quiet_loading():
            return PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"adapter {adapter!r} does not fit the model {base!r} ({first_line(exc)}); give an"
                             " adapter trained on this base model") from exc


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Within the block: no ``transformers`` progress bars ("Loading weights") or load reports, and no
    FutureWarnings (peft's, on every adapter load). tqstar checks what matters itself (:func:`load_pretrained`)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(auto_class, path: str, *, what: str, fix: str, allow_download: bool = False, **kwargs):
    """``(tokenizer, model)`` from ``auto_class.from_pretrained(path)``: quietly, offline unless ``allow_download``,
    and refused (:class:`ModelLoadError`) when any weight would be newly initialised (e.g. a causal LM's directory
    loaded as a sequence classifier gets a random scoring head, and so different scores every run)."""
    from transformers import AutoTokenizer

    offline = {"local_files_only": not allow_download}
    trust = {"trust_remote_code": kwargs["trust_remote_code"]} if "trust_remote_code" in kwargs else {}
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(path, **offline, **trust)
            model, info = auto_class.from_pretrained(path, output_loading_info=True, **offline, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {what} from {path!r} ({first_line(exc)}); {fix}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(f"{path!r} has no trained weights for {', '.join(missing[:3])}, which loading it as"
                             f" {what} would initialise at random; {fix}")
    return tokenizer, model


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` unless ``device`` names a torch device this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            reason = "torch built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {device!r} is not available ({reason}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} is not available ({torch.cuda.device_count()} CUDA GPUs are"
                              " visible); use cuda:0 or --device cpu")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available (no Apple GPU); use --device cpu")


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line and 200 characters (to quote inside one sentence)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def check_model_path(path: str, allow_download: bool = False) -> None:
    """Fail at once on a model path that does not exist, unless it is a hub id already in the local hub cache or
    ``allow_download`` is set (nothing is downloaded otherwise)."""
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelLoadError(f"model directory {path!r} has no config.json; give a transformers model directory")
        return
    hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if hub_id and (allow_download or in_hub_cache(path)):
        return
    raise ModelLoadError(f"model path {path!r} does not exist; give a local model directory"
                         + (" (or allow_download: true to fetch the hub id)" if hub_id else ""))


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local hub cache holds ``repo_id``'s config.json (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False
