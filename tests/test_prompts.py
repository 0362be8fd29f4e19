"""Prompt-set readers: files, built-in sets and their fixed split, and one-sentence errors."""

from __future__ import annotations

import json

import pytest

from tqstar.errors import ConfigError, ModelLoadError
from tqstar.prompts import builtin_prompts, load_prompts, read_prompt_file


def test_text_jsonl_and_csv_files(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\n second line \n")
    assert read_prompt_file(tmp_path / "p.txt") == ["first", " second line "]
    (tmp_path / "p.jsonl").write_text(json.dumps({"q": "a"}) + "\n" + json.dumps({"q": "b"}) + "\n")
    assert read_prompt_file(tmp_path / "p.jsonl", "q") == ["a", "b"]
    (tmp_path / "p.csv").write_text('id,question\n1,"hello, world"\n2,bye\n')
    assert load_prompts(str(tmp_path / "p.csv"), column="question", limit=1) == ["hello, world"]


@pytest.mark.parametrize(
    ("name", "content", "column", "message"),
    [
        ("p.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', None, "line 2 of '{path}' has no 'prompt' field"),
        ("p.jsonl", '{"prompt": "a"}\nnot json\n', None, "line 2 of '{path}' is not valid JSON"),
        ("p.csv", "a,b\n1,2\n", "prompt", "'{path}' has no 'prompt' column (columns: a, b)"),
        ("p.txt", "\n\n", None, "prompt set '{path}' is empty"),
    ],
)
def test_bad_files(tmp_path, name, content, column, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=None) as err:
        load_prompts(str(path), column=column)
    assert message.format(path=path) in str(err.value)


def test_missing_file_and_bad_limit(tmp_path):
    with pytest.raises(ConfigError, match="prompts file '/no/file.txt' does not exist"):
        load_prompts("/no/file.txt")
    with pytest.raises(ConfigError, match="`limit` must be an integer >= 1, got 0"):
        load_prompts("/no/file.txt", limit=0)


@pytest.mark.parametrize(("name", "total"), [("rtp", 693), ("dna", 939), ("mtbench", 80)])
def test_builtin_sets_split_deterministically(name, total):
    try:
        builtin_prompts(name)
    except ModelLoadError as exc:  # the package that ships the set is not installed
        pytest.skip(str(exc))
    train, test, everything = (builtin_prompts(name, s) for s in ("train", "test", "all"))
    assert 0.85 * total < len(everything) <= total  # duplicates removed
    assert train + test == everything and not set(train) & set(test)
    assert builtin_prompts(name, "test") == test  # fixed seed: the same split every time
    assert load_prompts(f"{name}:train", limit=5) == train[:5]


def test_unknown_split():
    with pytest.raises(ConfigError, match="split 'dev' of prompt set 'rtp' must be one of train, test, all"):
        builtin_prompts("rtp", "dev")


def test_local_hf_dataset(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps({"question": f"q{i}"}) for i in range(3)) + "\n")
    assert load_prompts(f"hf:{tmp_path}:train", column="question") == ["q0", "q1", "q2"]
    with pytest.raises(ConfigError, match="has no 'prompt' column"):
        load_prompts(f"hf:{tmp_path}:train")
