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
    (tmp_path / "p.tsv").write_text("id\tprompt\n1\thello, world\n2\tbye\n")  # the header is no prompt
    assert read_prompt_file(tmp_path / "p.tsv") == ["hello, world", "bye"]


def test_chat_message_prompts_from_files_and_yaml_decode(tmp_path, tiny_paths, capsys):
    """A prompt may be a list of chat messages in JSON/JSONL files and YAML configs, and decodes like the library's."""
    from tqstar.cli import main
    from tqstar.engine import Engine
    from tqstar.lm.hf import TransformersLM
    from tqstar.params import DecodeParams

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "How do I make tea?"}]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": chat}) + "\n" + json.dumps({"prompt": "plain"}) + "\n")
    assert read_prompt_file(tmp_path / "p.jsonl") == [chat, "plain"]
    (tmp_path / "p.json").write_text(json.dumps([chat]))
    assert read_prompt_file(tmp_path / "p.json") == [chat]
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--sft", str(tiny_paths["sft"]), "--method", "sft", "--max-new-tokens", "3", "--no-progress"]
    assert main([*argv, "--prompts-file", str(tmp_path / "p.jsonl"), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sft = TransformersLM.from_pretrained(tiny_paths["sft"])
    expected = Engine(sft).generate([chat], DecodeParams(method="sft", max_new_tokens=3), progress=False)[0]
    assert rows[0]["prompt"] == "How do I make tea?" and rows[0]["token_ids"] == expected.token_ids
    config = tmp_path / "run.yaml"
    config.write_text("prompts:\n  - [{role: user, content: \"How do I make tea?\"}]\n")
    assert main([*argv, "--config", str(config), "-o", str(tmp_path / "o2.jsonl")]) == 0
    capsys.readouterr()


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


def test_each_prompt_keeps_its_place_in_the_file(tmp_path):
    """Row numbers match the file: blank lines and a CSV header are counted, a quoted cell may span lines."""
    cases = {
        "p.txt": ("\nfirst\n\nsecond\n", ["line 2", "line 4"]),
        "p.jsonl": ('{"prompt": "first"}\n\n{"prompt": "second"}\n', ["line 1", "line 3"]),
        "p.json": ('["first", "second"]', ["item 0", "item 1"]),
        "p.csv": ('id,prompt\n\n1,"first\nof two lines"\n2,second\n', ["line 3", "line 5"]),
        "p.tsv": ("prompt\nfirst\n\nsecond\n", ["line 2", "line 4"]),
    }
    for name, (content, where) in cases.items():
        (tmp_path / name).write_text(content)
        prompts = read_prompt_file(tmp_path / name)
        assert len(prompts) == 2 and prompts.where == where, name
        assert load_prompts(str(tmp_path / name), limit=1).where == where[:1]


def test_eval_rows_say_where_their_prompt_stands_in_the_file(tmp_path, tiny_paths):
    from conftest import write_eval_config

    from tqstar.cli import main
    from tqstar.eval.results import read_rows

    config = write_eval_config(tmp_path, tiny_paths, 2, methods=[{"method": "sft"}])
    (tmp_path / "prompts.txt").write_text("\n\nfirst prompt\n\nsecond prompt\n")
    assert main(["eval", "--config", config, "--no-progress", "--coherence", "none"]) == 0
    _, rows = read_rows(tmp_path / "out.jsonl")
    assert [(r["prompt_index"], r["prompt_at"], r["prompt"]) for r in rows] == [
        (0, "line 3", "first prompt"), (1, "line 5", "second prompt")]
