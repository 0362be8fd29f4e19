"""The docs run as written: the README's and the guides' examples on the tiny models, their links and paths.

Which fenced blocks run is decided by their **content**, not by a marker:

* A ``bash``/``sh`` block runs when every command in it is either a ``tqstar generate|eval|report|testbed`` command
  that uses only the tiny built-in models, or a harmless shell command that writes or shows a file (``printf``,
  ``echo``, ``cat``, ``head``, ``ls``). A ``tqstar`` command uses only the tiny models when it names no model: no
  ``--sft``/``--baseline`` flag (nor their adapters or tokenizers) and, when it has ``--config FILE``, no ``sft``,
  ``baseline`` or ``baselines`` key in that file. (With no SFT model, tqstar uses its tiny random models.) Any other
  command (``tqstar serve`` or ``demo``, ``make``, ``pip``, ``curl``, ``python``, ``.venv/bin/...``) means the block
  needs more than this test has, so the block is left to be run by hand.
* A ``python`` block runs when it builds the tiny models (``build_tiny_models``).
* A ``yaml`` or ``python`` block whose first line is a comment naming a file (``# run.yaml``) *is* that file: it is
  written into the working directory of every block of its document before the block runs, so a command can use it
  as written.

Each block runs on its own, in a fresh temporary directory, under ``bash -e`` (a shell block) or the venv's Python,
and must exit 0. The ``tqstar`` on its ``PATH`` is the venv's Python running this checkout's ``tqstar.cli`` (the
source these tests import, first on ``sys.path``), started like the installed console script, so ``sys.path[0]`` is
its own folder and not the working directory (a ``module:function`` reward needs ``PYTHONPATH=.`` there too).

Besides: the README stays a front door (at most 160 lines), its methods table is the one
:func:`tqstar.methods.markdown_table` generates, every relative link of the README and ``docs/`` points at a file
that exists (and at a heading that exists, when it names one), and every repository path and ``tqstar.*`` name they
quote in backticks exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import tqstar
from tqstar.methods import markdown_table

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(tqstar.__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 160

SHELL = {"bash", "sh", "shell"}
#: Commands a shell block may hold besides tiny ``tqstar`` commands: they write or show files.
HARMLESS = {"printf", "echo", "cat", "head", "ls"}
TINY_COMMANDS = {"generate", "eval", "report", "testbed"}
#: Flags that name a model (or a model's part): a command with one of these is not on the tiny models.
MODEL_FLAGS = ("--sft", "--baseline", "--sft-adapter", "--baseline-adapter", "--sft-tokenizer", "--baseline-tokenizer")
MODEL_KEYS = {"sft", "baseline", "baselines"}
FILE_NAME = re.compile(r"#\s*([\w.-]+\.(?:ya?ml|py))\s*$")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def file_name(self) -> str | None:
        """The file this block is, when its first line names one (``# run.yaml``)."""
        if self.lang not in ("yaml", "yml", "python"):
            return None
        first = self.text.splitlines()[0] if self.text else ""
        match = FILE_NAME.fullmatch(first.strip())
        return match.group(1) if match else None


def fenced_blocks(doc: Path) -> list[Block]:
    """Every fenced code block of ``doc``: its language (the info string's first word), text and first line."""
    blocks, lines = [], doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,})\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        body, i = [], i + 1
        while i < len(lines) and not re.match(rf"^\s*{fence}\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append(Block(doc, i - len(body), lang.lower(), "\n".join(body) + "\n"))
        i += 1
    return blocks


def doc_files(doc: Path) -> dict[str, str]:
    """The files ``doc`` shows as named blocks: name -> content."""
    return {b.file_name: b.text for b in fenced_blocks(doc) if b.file_name}


def commands(script: str) -> list[list[str]]:
    """The commands of a shell block, each as words (continuation lines joined, comments and ``VAR=value``
    prefixes dropped)."""
    found, pending = [], ""
    for line in script.replace("\\\n", " ").splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quoted string that goes on over the next line
            continue
        pending = ""
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            found.append(words)
    return found + ([["<unclosed quote>"]] if pending else [])


def config_names_a_model(path: str, files: dict[str, str]) -> bool:
    """Whether a ``--config`` file (one the document shows, or a file of the repository) names a model."""
    if path in files:
        data = yaml.safe_load(files[path])
    elif (ROOT / path).is_file():
        data = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
    else:
        return False  # not shown anywhere: the block runs, and fails saying so
    return isinstance(data, dict) and bool(MODEL_KEYS & set(data))


def on_tiny_models(words: list[str], files: dict[str, str]) -> bool:
    if words[0] in HARMLESS:
        return True
    if words[0] != "tqstar" or len(words) < 2 or words[1] not in TINY_COMMANDS:
        return False
    if any(w == flag or w.startswith(flag + "=") for w in words for flag in MODEL_FLAGS):
        return False
    configs = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config"]
    configs += [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
    return not any(config_names_a_model(c, files) for c in configs)


def runs_here(block: Block) -> bool:
    """The rule of this module's docstring."""
    if block.file_name:
        return False
    if block.lang in SHELL:
        found = commands(block.text)
        files = doc_files(block.doc)
        return any(w[0] == "tqstar" for w in found) and all(on_tiny_models(w, files) for w in found)
    return block.lang == "python" and "build_tiny_models" in block.text


RUNNABLE = [b for doc in DOCS for b in fenced_blocks(doc) if runs_here(b)]


@pytest.fixture(scope="module")
def environment(tmp_path_factory, tiny_paths) -> dict[str, str]:
    """The variables a block runs with: ``tqstar`` on the ``PATH``, the tiny models in their cache, one thread."""
    bin_dir = tmp_path_factory.mktemp("bin")
    launcher = bin_dir / "tqstar"
    launcher.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.path.insert(1, {str(SRC)!r})
        from tqstar.cli import main
        sys.exit(main())
        """))
    launcher.chmod(0o755)
    cache = tmp_path_factory.mktemp("cache")  # the built-in default finds the session's tiny models here
    (cache / "tiny").mkdir()
    for role, path in tiny_paths.items():
        (cache / "tiny" / role).symlink_to(path)
    env = {k: v for k, v in os.environ.items() if k != "TQSTAR_DEBUG"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", TQSTAR_CACHE=str(cache), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(SRC), MPLBACKEND="Agg")
    return env


def test_some_blocks_of_every_kind_run():
    """The rule selects the README's tiny examples (a command line and a Python block) and the guides'."""
    kinds = {(b.doc.name, b.lang in SHELL) for b in RUNNABLE}
    assert {("README.md", True), ("README.md", False), ("cli.md", True), ("evaluation.md", True),
            ("testbed.md", True), ("architecture.md", False)} <= kinds, sorted(kinds)


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_a_tiny_model_block_runs_as_written(block, tmp_path, environment):
    for name, text in doc_files(block.doc).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    if block.lang in SHELL:
        argv = ["bash", "-e", "-c", block.text]
    else:
        (tmp_path / "block.py").write_text(block.text, encoding="utf-8")
        argv = [sys.executable, "block.py"]
    done = subprocess.run(argv, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"{block.name} exited {done.returncode}:\n{block.text}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


# ---- the README, links and names ----------------------------------------------------------------------------
def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference prose to docs/"
    assert lines[0] == "# tqstar"
    first_block = next(b for b in fenced_blocks(ROOT / "README.md") if b.lang in SHELL)
    assert [w[:2] for w in commands(first_block.text)] == [["make", "demo"], ["make", "test"]]


def test_the_readme_methods_table_is_generated_from_the_methods_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- generated by tqstar\.methods\.markdown_table\(\)[^\n]*-->\n(.*?)\n<!-- end of the"
                      r" generated table -->", text, re.S)
    assert found, "README.md lost the markers around its methods table"
    assert found.group(1) == markdown_table(), ("README.md's methods table differs from tqstar.methods; paste the"
                                                " output of: python -c 'from tqstar.methods import markdown_table;"
                                                " print(markdown_table())'")


def prose(doc: Path) -> str:
    """``doc`` without its fenced blocks (a link or path there is an example, not a reference)."""
    return re.sub(r"^(\s*)(`{3,}).*?^\s*\2\s*$", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_\\]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose(doc), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_that_exists(doc):
    broken = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(doc)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


#: A repository path in backticks: under one of these folders, or a module of the package (``lm/hf.py``).
REPO_PATH = re.compile(r"^(?:src|tests|docs|setups|scripts|bench)/[\w./-]*$|^[\w/]+\.py$")


def quoted_names(doc: Path) -> list[str]:
    return re.findall(r"`([^`\s]+)`", prose(doc))


def names_the_package(name: str) -> bool:
    """Whether ``tqstar.x...`` reads as a name in the package (``tqstar.x`` is a module or a public name); the
    docs also quote request fields such as ``tqstar.alpha``."""
    first = name.split(".")[1]
    return hasattr(tqstar, first) or importlib.util.find_spec(f"tqstar.{first}") is not None


def resolves(name: str) -> bool:
    """Whether ``tqstar.a.b.C`` names a module or an attribute of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_quoted_path_and_name_exists(doc):
    missing = []
    for name in quoted_names(doc):
        name = re.sub(r"\(\)$", "", name.rstrip(".,:;"))
        if REPO_PATH.match(name):
            path = name.split("::")[0]
            if not any((base / path).exists() for base in (ROOT, doc.parent, SRC / "tqstar")):
                missing.append(name)
        elif re.fullmatch(r"tqstar(\.\w+)+", name) and names_the_package(name) and not resolves(name):
            missing.append(name)
    assert not missing, f"{doc.relative_to(ROOT)} quotes paths or names that do not exist: {missing}"
