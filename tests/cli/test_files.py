"""Files the user could lose: eval/report/generate never modify a file before knowing it is theirs to modify.

Each test failed on the code before this was fixed: a notes file given as `eval --output` was erased; `generate -o`
emptied FILE before decoding; a complete last row without a newline had the next row glued onto it; two evals on
one file both appended; `report` counted duplicate rows and merged one label from two configurations; the eval
fingerprint held judge names only.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TESTS_DIR
from conftest import write_eval_config as eval_config

from tqstar.cli import main
from tqstar.eval.report import report
from tqstar.eval.results import read_rows
from tqstar.prompts import read_prompt_file


def other_judge(prompts, responses):
    """A judge with the same name in a config as conftest:vowel_share, but another function."""
    return [float(len(r)) for r in responses]


def fails_on_second_prompt(prompts, responses):
    if any(p == "explode" for p in prompts):
        raise RuntimeError("reward crashed")
    return [0.5] * len(responses)


def _config(tmp_path: Path, tiny_paths, n_prompts: int = 4, **extra) -> str:
    """test_evaluation's config (tiny models, a vowel-share reward and judge), with only `sft` by default."""
    return eval_config(tmp_path, tiny_paths, n_prompts, **{"methods": [{"method": "sft"}], **extra})


def _eval(config: str, *flags: str) -> int:
    return main(["eval", "--config", config, "--no-progress", "--coherence", "none", *flags])


def test_eval_never_touches_a_file_that_is_not_its_own(tmp_path, tiny_paths, capsys):
    notes = tmp_path / "notes.txt"
    for content in ("my one-line notes", "line one\nline two without newline", '{"key": "json but not ours"}\n'):
        notes.write_text(content)
        assert _eval(_config(tmp_path, tiny_paths), "--output", str(notes)) == 2
        assert notes.read_text() == content
        assert "is not a tqstar evaluation file" in capsys.readouterr().err


def test_generate_output_keeps_old_content_when_decoding_fails(tmp_path, tiny_paths, capsys):
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--sft", str(tiny_paths["sft"]), "--no-chat-template", "--method", "args", "--k", "2",
            "--max-new-tokens", "2", "--batch-size", "1", "--reward", "test_files:fails_on_second_prompt",
            "--prompt", "fine", "--prompt", "explode", "-o", str(out), "--no-progress"]
    assert main(argv[:-7] + ["--prompt", "earlier results", "-o", str(out), "--no-progress"]) == 0
    kept = out.read_text()
    assert json.loads(kept)["prompt"] == "earlier results"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert out.read_text() == kept
    assert "RuntimeError: reward crashed" in err and f"{out} is unchanged" in err
    partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and json.loads(partial[0].read_text())["prompt"] == "fine"  # the finished work
    assert main(argv[:-7] + ["--prompt", "fine", "-o", str(out), "--no-progress"]) == 0  # success replaces it
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == ["fine"]


def test_a_complete_last_row_without_newline_is_not_glued_onto(tmp_path, tiny_paths):
    config = _config(tmp_path, tiny_paths)
    assert _eval(config) == 0
    path = tmp_path / "out.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # e.g. edited in an editor that drops the final newline
    more = _config(tmp_path, tiny_paths, methods=[{"method": "sft"}, {"method": "args", "alpha": 1.0}])
    assert _eval(more) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 2 * 4 and all(json.loads(line) for line in lines)
    assert _eval(more) == 0  # and later runs accept the file
    assert len(path.read_text().splitlines()) == 9


def test_a_second_eval_on_the_same_file_is_refused_while_the_first_runs(tmp_path, tiny_paths, capsys):
    config = _config(tmp_path, tiny_paths, n_prompts=200, batch_size=1,
                     methods=[{"method": "tq-direct", "alpha": 1.0}])
    path = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR),
                                                        str(Path(__import__("tqstar").__file__).parents[1])])}
    first = subprocess.Popen([sys.executable, "-m", "tqstar.cli", "eval", "--config", config, "--no-progress",
                              "--coherence", "none"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not path.exists() or len(path.read_bytes().splitlines()) < 2):
            time.sleep(0.05)
        assert first.poll() is None, "the first run must still be running"
        assert _eval(config) == 2
        err = capsys.readouterr().err
        assert "is being written by another tqstar eval right now" in err and "give another --output" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    _, rows = read_rows(path)
    keys = [(r["method"], r["prompt_index"]) for r in rows]
    assert len(keys) == len(set(keys))


def test_report_counts_each_row_once_and_refuses_a_file_given_twice(tmp_path, tiny_paths, caplog):
    assert _eval(_config(tmp_path, tiny_paths)) == 0
    path = tmp_path / "out.jsonl"
    with pytest.raises(Exception, match="is given twice"):
        report([path, tmp_path / "." / "out.jsonl"])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + lines[1:]))  # every row twice, as two unlocked runs wrote them
    caplog.clear()
    table, _ = report(path)
    assert table[0]["n"] == 4
    assert "repeats 4 (method, prompt) rows" in caplog.text  # a warning on the tqstar logger


def test_report_refuses_one_label_from_two_configurations(tmp_path, tiny_paths, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert _eval(_config(a, tiny_paths, methods=[{"method": "sft"}, {"method": "args", "alpha": 1.0}])) == 0
    (b / "prompts.txt").write_text((a / "prompts.txt").read_text())
    other = _config(b, tiny_paths, reward="test_files:other_judge", prompts={"source": str(a / "prompts.txt")},
                    methods=[{"method": "sft"}, {"method": "args", "alpha": 1.0, "label": "args-other"}])
    assert _eval(other) == 0
    capsys.readouterr()
    assert main(["report", str(a / "out.jsonl"), str(b / "out.jsonl"), "--coherence", "none"]) == 2
    err = capsys.readouterr().err
    assert f"'{b / 'out.jsonl'}' and '{a / 'out.jsonl'}' differ in the target reward (`reward`)" in err
    assert """'{"spec": "test_files:other_judge"}' vs '{"spec": "conftest:vowel_share"}'""" in err  # both values


def test_eval_fingerprint_holds_each_judges_spec(tmp_path, tiny_paths, capsys):
    assert _eval(_config(tmp_path, tiny_paths)) == 0
    header, _ = read_rows(tmp_path / "out.jsonl")
    assert header["config"]["judges"]["length"]["spec"] == "conftest:vowel_share"
    capsys.readouterr()
    assert _eval(_config(tmp_path, tiny_paths, judges={"length": "test_files:other_judge"})) == 2
    assert "holds results of a different configuration (`judges` differs)" in capsys.readouterr().err


def test_prompt_files_drop_a_bom_and_read_json_arrays(tmp_path):
    (tmp_path / "p.txt").write_bytes("\ufefffirst\nsecond\n".encode())
    assert read_prompt_file(tmp_path / "p.txt") == ["first", "second"]
    (tmp_path / "p.json").write_text(json.dumps(["a", {"prompt": "b"}]))
    assert read_prompt_file(tmp_path / "p.json") == ["a", "b"]
    (tmp_path / "q.json").write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b"}) + "\n")
    assert read_prompt_file(tmp_path / "q.json") == ["a", "b"]  # JSON lines in a .json file still read
    (tmp_path / "p.csv").write_bytes("\ufeffprompt,id\nhello,1\n".encode())
    assert read_prompt_file(tmp_path / "p.csv") == ["hello"]


def test_reward_format_flag_reads_escapes():
    from tqstar.config import unescape

    assert unescape(r"Human: {prompt}\n\nAssistant:\t{response}") == "Human: {prompt}\n\nAssistant:\t{response}"
    assert unescape(r"a\\nb \d") == "a\\nb \\d"  # an escaped backslash stays one; other escapes stay as typed


def test_no_progress_bar_codes_in_a_log(tmp_path, tiny_paths, capsys):
    assert main(["eval", "--config", _config(tmp_path, tiny_paths), "--coherence", "none"]) == 0  # bars not off
    err = capsys.readouterr().err  # not a terminal
    assert "\r" not in err and "\x1b[" not in err and "eval:" not in err


def test_generate_creates_missing_directories_and_refuses_unwritable_ones(tmp_path, tiny_paths, monkeypatch, capsys):
    out = tmp_path / "new" / "sub" / "out.jsonl"
    argv = ["generate", "--sft", str(tiny_paths["sft"]), "--no-chat-template", "--method", "none", "--k", "2",
            "--max-new-tokens", "2", "--prompt", "hi", "-o", str(out), "--no-progress"]
    assert main(argv) == 0 and json.loads(out.read_text())["prompt"] == "hi"
    monkeypatch.setattr("tqstar._files.os.access", lambda path, mode: False)  # as for a non-root user in a 0o555 dir
    assert main(argv[:-3] + ["-o", str(tmp_path / "other" / "out.jsonl"), "--no-progress"]) == 2
    assert f"directory '{tmp_path}' is not writable; give a writable path" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_generate_replaces_only_its_own_output(tmp_path, tiny_paths, capsys, suffix):
    """-o replaces a file generate wrote before (text or JSONL), never another file."""
    out = tmp_path / f"out{suffix}"
    argv = ["generate", "--sft", str(tiny_paths["sft"]), "--method", "sft", "--max-new-tokens", "2", "-o", str(out),
            "--no-progress"]
    assert main([*argv, "--prompt", "first"]) == 0
    assert main([*argv, "--prompt", "second"]) == 0
    assert "second" in out.read_text() and "first" not in out.read_text()
    capsys.readouterr()
    for content in ("my notes\n", '{"prompt": "not a response row"}\n', "### heading of my own notes\n"):
        out.write_text(content)
        assert main([*argv, "--prompt", "third"]) == 2
        assert out.read_text() == content
        assert "exists and was not written by tqstar generate" in capsys.readouterr().err


# ---- output files by identity (issue 20) ----------------------------------------------------------------------
def _generate(tiny_paths, out: str, *flags: str) -> int:
    return main(["generate", "--sft", str(tiny_paths["sft"]), "--no-chat-template", "--method", "sft",
                 "--max-new-tokens", "2", "--prompt", "hi", "-o", out, "--no-progress", *flags])


def test_generate_to_a_symlinked_fifo_streams_and_leaves_both_as_they_were(tmp_path, tiny_paths):
    """`-o /dev/stdout` as a test that does not touch the real /dev: `stdout` is a symlink to a FIFO, as /dev/stdout
    is to the pipe behind fd 1. The responses arrive through the FIFO; the link and the FIFO stay what they were."""
    import threading

    fifo, link = tmp_path / "fifo", tmp_path / "stdout"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))  # blocks until generate opens it
    reader.start()
    try:
        assert _generate(tiny_paths, str(link)) == 0
    finally:
        if reader.is_alive():  # generate never opened the FIFO: unblock the reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert received and received[0].startswith(b"### [sft] hi\n")  # the text output, as on a terminal (no mark)
    assert link.is_symlink() and os.readlink(link) == str(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "stdout"]  # no temporary file left beside them


def test_generate_to_a_character_device_writes_to_it(tmp_path, tiny_paths):
    link = tmp_path / "null"
    link.symlink_to(os.devnull)
    assert _generate(tiny_paths, str(link), "--format", "jsonl") == 0
    assert link.is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["null"]


def test_generate_dash_is_stdout(tmp_path, tiny_paths, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _generate(tiny_paths, "-") == 0
    assert capsys.readouterr().out.startswith("### [sft] hi\n")
    assert list(tmp_path.iterdir()) == []  # no file named "-"


def test_generate_marks_its_files_and_replaces_through_a_symlink(tmp_path, tiny_paths):
    from tqstar._files import MARK

    out, link = tmp_path / "out.jsonl", tmp_path / "link.jsonl"
    assert _generate(tiny_paths, str(out)) == 0
    assert json.loads(out.read_text())["written_by"] == f"tqstar generate {MARK}"
    link.symlink_to(out)
    assert _generate(tiny_paths, str(link), "--seed", "3") == 0  # the target is replaced, the link stays a link
    assert link.is_symlink() and json.loads(out.read_text())["prompt"] == "hi"
    text = tmp_path / "out.txt"
    assert _generate(tiny_paths, str(text)) == 0
    assert text.read_text().splitlines()[0] == f"<!-- tqstar generate {MARK}: -o replaces a file only when it begins" \
                                               " with this line -->"
    assert _generate(tiny_paths, str(text)) == 0


@pytest.mark.parametrize("content", [
    "### [notes] my Markdown notes start like a response block\n",  # generate's old output looked like this
    json.dumps({"prompt": "p", "method": "sft", "token_ids": [1], "accounting": {}}) + "\n",  # an old JSONL output
    "<!-- tqstar generate 0000000000000000: -o replaces ... -->\n### [sft] hi\n",  # another tag
    json.dumps({"written_by": "tqstar generate 5e0c7d1a9b3f4826", "prompt": "p", "method": "sft", "text": "",
                "token_ids": [], "finish_reason": "stop", "accounting": {}}) + "\nmy notes appended\n",  # edited
])
def test_generate_refuses_files_without_its_mark_or_shape(tmp_path, tiny_paths, capsys, content):
    out = tmp_path / "out.txt"
    out.write_text(content)
    assert _generate(tiny_paths, str(out)) == 2
    assert out.read_text() == content
    assert "was not written by tqstar generate (its first line has no tqstar mark)" in capsys.readouterr().err


def test_eval_output_must_be_a_regular_file(tmp_path, tiny_paths, capsys):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    assert _eval(_config(tmp_path, tiny_paths), "--output", str(fifo)) == 2
    assert "eval resumes from its output, so it must be a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_eval_header_carries_the_mark_and_older_files_still_resume(tmp_path, tiny_paths):
    from tqstar._files import MARK

    config = _config(tmp_path, tiny_paths)
    assert _eval(config) == 0
    path = tmp_path / "out.jsonl"
    lines = path.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["written_by"] == f"tqstar eval {MARK}"
    del head["written_by"]  # as tqstar wrote it before the mark existed, one row short
    path.write_text("\n".join([json.dumps(head), *lines[1:-1]]) + "\n")
    assert _eval(config) == 0
    assert len(read_rows(path)[1]) == 4


def test_report_out_dir_replaces_only_files_its_manifest_proves(tmp_path, tiny_paths, capsys):
    assert _eval(_config(tmp_path, tiny_paths)) == 0
    results, out = str(tmp_path / "out.jsonl"), tmp_path / "report"
    argv = ["report", results, "--coherence", "none", "--out-dir", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # the second run replaces the first one's files
    manifest = json.loads((out / ".tqstar-manifest.json").read_text())
    assert set(manifest["files"]) == {"table.md", "table.csv", "reward_by_method.png"}
    (out / "table.md").write_text((out / "table.md").read_text() + "my own line\n")  # edited: the user's now
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds table.md, which tqstar did not write (or which was changed since)" in capsys.readouterr().err
    assert (out / "table.md").read_text().endswith("my own line\n")


def test_generate_to_a_descriptor_path_writes_through_the_descriptor(tmp_path, tiny_paths):
    """`-o /dev/stdout >> log` appends to log: a path that names an open descriptor (/dev/fd/N, as /dev/stdout links
    to /proc/self/fd/1) is written through that descriptor, keeping its append mode, not opened anew at offset 0."""
    log = tmp_path / "log.txt"
    log.write_text("my log line\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    link = tmp_path / "stdout"
    link.symlink_to(f"/dev/fd/{fd}")
    try:
        assert _generate(tiny_paths, str(link)) == 0
    finally:
        os.close(fd)
    text = log.read_text()
    assert text.startswith("my log line\n### [sft] hi\n") and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "stdout"]
