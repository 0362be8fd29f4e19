"""The files a user hands tqstar, and the files tqstar writes: checked before they are read or touched.

tqstar knows its own files **by identity, not by appearance**. Every file it may later replace or resume carries
:data:`MARK`, a fixed random tag, in its first row: a JSON row's ``"written_by": "tqstar <command> <MARK>"`` (the
rows of ``generate``'s JSONL, the header of an ``eval`` results file), or, for ``generate``'s text output, a first
line that holds it (an HTML comment, so Markdown renders nothing). A user's file does not carry a 16-hex-digit tag by
accident; the tag is checked together with the file's shape (every row a response row, the text's blocks), so a
file tqstar wrote and a user then edited into something else is not tqstar's any more. ``report --out-dir``, whose
PNG and CSV files have no room for a first-row mark, keeps a manifest (:class:`OutDir`): a file there is tqstar's
when the manifest lists it with the SHA-256 of its current bytes.

Anything that is not a regular file -- a FIFO, a character device such as ``/dev/null`` or a terminal, a pipe
behind ``/dev/stdout``, a symlink to one of them -- is written *to* as a stream (:class:`StreamOutput`), never
replaced, and ``-o -`` is standard output. ``/dev/stdout``, ``/dev/fd/N`` and ``/proc/self/fd/N`` are written to
through the descriptor itself, whatever it is open on, so ``-o /dev/stdout >> log`` appends to ``log``. A block
device (a disk) or a socket is refused.

* :func:`read_text` reads a user's text file (config, prompts) as UTF-8 (a byte-order mark is dropped), and
  turns a missing path, a directory, an unreadable or binary file into one :class:`ConfigError` sentence.
* :func:`check_output` checks, before any model loads, that an output path can be written (:func:`output_kind`).
* :func:`check_not_input` refuses an output path that is one of the run's input files.
* :func:`open_output` is how ``generate -o`` writes: a stream as it goes, or a regular file **write-then-rename**
  (:class:`ReplaceOnSuccess`): responses go to a temporary file beside the file as they finish; only a run that
  completes replaces it (``os.replace``, atomic). A failed run leaves the file as it was, and what was finished stays
  in the temporary file, which is named on stderr. A symlink to a regular file has its target replaced, not itself.
* :func:`lock_exclusive` takes a non-blocking ``fcntl.flock`` on an open file, so two ``tqstar eval`` runs
  cannot append to one results file at once: the second is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from .errors import ConfigError

#: tqstar's mark: a fixed random tag in the first row of every file tqstar may later replace or resume.
MARK = "5e0c7d1a9b3f4826"
#: The JSON key that carries :func:`written_by`.
WRITTEN_BY = "written_by"


def written_by(command: str) -> str:
    """The identity a file written by ``tqstar <command>`` carries in its first row."""
    return f"tqstar {command} {MARK}"


def read_text(path: str | Path, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``; ``what`` names the file in messages ("prompts file") and ``fix`` says what to
    give instead ("give a text, JSONL or CSV file")."""
    raw = read_bytes(path, what, fix)
    if b"\0" in raw:
        raise ConfigError(f"{what} {str(path)!r} is a binary file, not text; {fix}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset"
                          f" {exc.start}); save it as UTF-8") from None


def read_bytes(path: str | Path, what: str, fix: str) -> bytes:
    """The bytes of an existing regular file ``path``, or a :class:`ConfigError` saying why not."""
    path = Path(path)
    kind = output_kind(path)
    if kind == "missing":
        raise ConfigError(f"{what} {str(path)!r} does not exist; {fix}")
    if kind == "directory":
        raise ConfigError(f"{what} {str(path)!r} is a directory; {fix}")
    if kind != "file":
        raise ConfigError(f"{what} {str(path)!r} is not a regular file ({KIND_NAMES[kind]}); {fix}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r} ({exc.strerror}); check that it is a readable"
                          " file") from None


Kind = Literal["missing", "file", "directory", "stream", "block", "socket"]
KIND_NAMES = {"stream": "a FIFO, pipe or character device", "block": "a block device",
              "socket": "a socket", "directory": "a directory", "file": "a regular file", "missing": "missing"}


def output_kind(path: str | Path) -> Kind:
    """What ``path`` is, following symlinks: ``missing`` (also a dangling symlink), a regular ``file``, a
    ``directory``, a ``stream`` (FIFO, pipe, character device: written to as it goes), a ``block`` device or a
    ``socket`` (neither is ever written)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError:  # a loop of symlinks, a folder that cannot be searched: what later reads or writes will say
        return "missing" if not os.path.lexists(path) else "file"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISBLK(mode):
        return "block"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "stream"


def check_output(path: str | Path, what: str, *, directory: bool = False, stream: bool = True) -> Path:
    """Raise :class:`ConfigError` unless ``path`` (a file, or with ``directory`` a folder) can be written:
    it is not the other kind, not a block device or socket (nor, without ``stream``, a FIFO or device), and it
    or the nearest existing folder above it is writable."""
    path = Path(path)
    kind = output_kind(path)
    if not directory and kind == "directory":
        raise ConfigError(f"{what} {str(path)!r} is a directory; give a file path")
    if directory and kind not in ("missing", "directory"):
        raise ConfigError(f"{what} {str(path)!r} is a file, not a directory; give a directory path")
    if kind in ("block", "socket"):
        raise ConfigError(f"{what} {str(path)!r} is {KIND_NAMES[kind]}, which tqstar does not write to; give a file"
                          " path" + (" (or - for standard output)" if stream else ""))
    if kind == "stream" and not stream:
        raise ConfigError(f"{what} {str(path)!r} is {KIND_NAMES[kind]}; tqstar eval resumes from its output, so it"
                          " must be a regular file; give a file path")
    if kind != "missing":
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what} {str(path)!r} is not writable; give a writable path")
        return path
    parent = Path(os.path.realpath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {str(path)!r} cannot be created: {str(parent)!r} is a file, not a directory;"
                          " give a path inside a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(path)!r} cannot be created: directory {str(parent)!r} is not writable;"
                          " give a writable path")
    return path


def check_not_input(output: str | Path, inputs: Sequence[tuple[str, object]]) -> None:
    """Raise :class:`ConfigError` if the output path is one of the run's input files (``(what, path)`` pairs;
    ``None`` or a non-path value is skipped): replacing it would destroy the input."""
    if output_kind(output) != "file":
        return
    for what, path in inputs:
        if isinstance(path, (str, Path)) and output_kind(path) == "file" and os.path.samefile(output, path):
            raise ConfigError(f"output file {str(output)!r} is the {what} of this run; writing it would destroy the"
                              " input, so give another -o")


def first_line(path: str | Path, limit: int = 1 << 20) -> bytes:
    """The first line of the regular file ``path`` (at most ``limit`` bytes, with its line end)."""
    with open(path, "rb") as fh:
        return fh.readline(limit)


def json_rows(path: str | Path) -> list[Any] | None:
    """Every non-empty line of ``path`` parsed as JSON, or ``None`` when one is not JSON (or not UTF-8)."""
    try:
        return [json.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]
    except ValueError:
        return None


class Output:
    """Where ``generate -o`` writes: ``write`` and ``flush`` as it goes, then ``commit`` (the run completed) or
    ``abort`` (it failed; returns the path of a file that keeps the finished work, if any)."""

    stream = True

    def write(self, text: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def abort(self) -> Path | None:
        return None


def open_descriptor(path: str | Path) -> int | None:
    """The file descriptor ``path`` names, when it or a symlink on its way is ``/dev/fd/N`` or ``/proc/self/fd/N``
    (``/dev/stdout`` is such a link): writing to a copy of it keeps the shell's redirection as it is (its offset,
    ``>>``'s append) instead of opening the file anew."""
    current = str(path)
    for _ in range(40):
        match = re.fullmatch(rf"/(?:dev|proc/self|proc/{os.getpid()})/fd/(\d+)", current)
        if match:
            return int(match.group(1))
        if not os.path.islink(current):
            return None
        target = os.readlink(current)
        current = os.path.join(os.path.dirname(current), target) if not os.path.isabs(target) else target
    return None


class StreamOutput(Output):
    """A stream: standard output (``-`` or ``None``), an open descriptor (:func:`open_descriptor`), or a FIFO, pipe
    or character device opened for writing (never created, truncated or replaced); each write goes straight to it."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = path
        self._own = path is not None and str(path) != "-"
        fd = open_descriptor(path) if self._own else None
        if fd is not None:
            sys.stdout.flush()  # what was printed before goes first
            self._fh: IO[str] = open(os.dup(fd), "w", encoding="utf-8")
        else:  # a FIFO blocks here until a reader opens it, as a shell's redirection does
            self._fh = (open(os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0)), "w", encoding="utf-8")
                        if self._own else sys.stdout)

    def write(self, text: str) -> None:
        self._fh.write(text)

    def flush(self) -> None:
        self._fh.flush()

    def commit(self) -> None:
        self.close()

    def abort(self) -> Path | None:
        self.close()
        return None

    def close(self) -> None:
        if self._own and not self._fh.closed:
            try:
                self._fh.close()
            except BrokenPipeError:
                pass


class ReplaceOnSuccess(Output):
    """Write-then-rename: ``write`` goes to a temporary file beside ``path`` (created at the first write);
    :meth:`commit` renames it over ``path``; :meth:`abort` leaves ``path`` untouched and keeps the temporary
    file only if something was written (returning its path). A symlink ``path`` has its target replaced."""

    stream = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(os.path.realpath(path))
        self._fh: IO[str] | None = None
        self._tmp: Path | None = None

    def write(self, text: str) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".partial")
            self._fh, self._tmp = os.fdopen(fd, "w", encoding="utf-8"), Path(name)
        self._fh.write(text)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def commit(self) -> None:
        if self._fh is None:  # nothing decoded: an empty output
            self.write("")
        assert self._fh is not None and self._tmp is not None
        self._fh.close()
        if self.path.exists():  # keep the permissions of the file being replaced
            os.chmod(self._tmp, self.path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)
        os.replace(self._tmp, self.path)

    def abort(self) -> Path | None:
        if self._fh is None or self._tmp is None:
            return None
        self._fh.close()
        if self._tmp.stat().st_size == 0:
            self._tmp.unlink()
            return None
        return self._tmp


def open_output(path: str | None, replaceable: Callable[[Path], bool], refusal: Callable[[str], str]) -> Output:
    """The :class:`Output` for ``-o path``: standard output for ``None`` or ``-``; a :class:`StreamOutput` for
    anything that is not a regular file; else a :class:`ReplaceOnSuccess`, when the file does not exist, is empty
    or ``replaceable(path)`` proves tqstar wrote it; otherwise :class:`ConfigError` with ``refusal(path)``."""
    if path is None or path == "-":
        return StreamOutput()
    kind = output_kind(path)
    if kind == "stream" or open_descriptor(path) is not None:
        return StreamOutput(path)
    if kind == "file" and os.path.getsize(path) > 0 and not replaceable(Path(path)):
        raise ConfigError(refusal(path))
    return ReplaceOnSuccess(path)


def lock_exclusive(fh: IO, path: str | Path, fix: str) -> None:
    """Take an exclusive ``flock`` on the open file ``fh`` without waiting; if another process holds it, raise
    :class:`ConfigError` naming ``path`` and ``fix``. (No-op where ``fcntl`` does not exist, i.e. Windows.)"""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"{str(path)!r} is being written by another tqstar eval right now; wait for that run to"
                          f" finish, or {fix}") from None


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex (read in chunks: model weights are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class OutDir:
    """A folder tqstar writes named files into (``report --out-dir``), with a manifest (:attr:`MANIFEST`) that
    records, under tqstar's mark, the SHA-256 of every regular file it wrote there. A file of one of those names
    is tqstar's to replace only when the manifest lists it with the hash of its current bytes (a file the user
    wrote, or edited since, is not); a stream under that name is written to; a block device or socket is refused.
    """

    MANIFEST = ".tqstar-manifest.json"

    def __init__(self, path: str | Path, command: str, what: str = "--out-dir") -> None:
        self.path, self.command, self.what = Path(path), command, what

    def _manifest(self) -> dict[str, str] | None:
        """The recorded hashes, ``{}`` without a manifest, ``None`` for a manifest tqstar did not write."""
        file = self.path / self.MANIFEST
        if not os.path.lexists(file):
            return {}
        if output_kind(file) != "file":
            return None
        rows = json_rows(file)
        if not rows or len(rows) != 1 or not isinstance(rows[0], dict) or rows[0].get(WRITTEN_BY) != written_by(
                self.command) or not isinstance(rows[0].get("files"), dict):
            return None
        return {str(k): str(v) for k, v in rows[0]["files"].items()}

    def check(self, names: Sequence[str]) -> None:
        """Raise :class:`ConfigError` unless every one of ``names`` may be written here."""
        manifest = self._manifest()
        if manifest is None:
            raise ConfigError(f"{self.what} {str(self.path)!r} holds {self.MANIFEST}, which tqstar did not write; give"
                              f" another {self.what}, or move that file away")
        for name in names:
            file = self.path / name
            kind = output_kind(file)
            if kind == "missing" or kind == "stream":
                continue
            if kind != "file" or manifest.get(name) != sha256(file):
                raise ConfigError(f"{self.what} {str(self.path)!r} already holds {name}, which tqstar did not write (or"
                                  f" which was changed since); give another {self.what}, or move that file away")

    def install(self, files: dict[str, Path]) -> None:
        """Put the files just made (``name -> a temporary file``) in place, checked again first: each regular one by
        an atomic rename (a symlink's target is replaced), each stream by copying into it; then record the hashes."""
        self.check(list(files))
        manifest = self._manifest() or {}
        for name, made in files.items():
            target = self.path / name
            if output_kind(target) == "stream":
                with open(os.open(target, os.O_WRONLY), "wb") as out, open(made, "rb") as src:
                    out.write(src.read())
                os.unlink(made)
                manifest.pop(name, None)
                continue
            digest = sha256(made)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(made, 0o666 & ~umask)
            os.replace(made, os.path.realpath(target))
            manifest[name] = digest
        manifest = {name: digest for name, digest in manifest.items()  # forget files removed or changed since
                    if output_kind(self.path / name) == "file" and sha256(self.path / name) == digest}
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=self.MANIFEST + ".", suffix=".partial")
        with os.fdopen(fd, "w") as fh:
            json.dump({WRITTEN_BY: written_by(self.command), "files": dict(sorted(manifest.items()))}, fh)
            fh.write("\n")
        os.replace(tmp, self.path / self.MANIFEST)
