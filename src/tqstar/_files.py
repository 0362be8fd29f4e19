"""The files a user hands tqstar, and the files tqstar writes: checked before they are read or touched.

* :func:`read_text` reads a user's text file (config, prompts) as UTF-8 (a byte-order mark is dropped), and
  turns a missing path, a directory, an unreadable or binary file into one :class:`ConfigError` sentence.
* :func:`check_output` checks, before any model loads, that an output path can be written: not a directory,
  inside a directory (missing directories are created when the first row is written) that is writable.
* :func:`check_not_input` refuses an output path that is one of the run's input files (``-o`` naming the
  ``--config`` or the prompts file would replace it).
* :class:`ReplaceOnSuccess` is how ``generate -o FILE`` writes: **write-then-rename**. Responses go to a
  temporary file beside FILE as they finish; only a run that completes replaces FILE (``os.replace``, atomic).
  A failed run leaves FILE as it was, and what was finished stays in the temporary file, which is named on
  stderr.
* :func:`replaceable_output` says whether ``generate -o FILE`` may replace FILE: only a file tqstar generate wrote
  (or an empty one), so a user's notes or data are never overwritten.
* :func:`lock_exclusive` takes a non-blocking ``fcntl.flock`` on an open file, so two ``tqstar eval`` runs
  cannot append to one results file at once: the second is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .errors import ConfigError


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
    if not path.exists():
        raise ConfigError(f"{what} {str(path)!r} does not exist; {fix}")
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory; {fix}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r} ({exc.strerror}); check that it is a readable"
                          " file") from None


def check_output(path: str | Path, what: str, *, directory: bool = False) -> Path:
    """Raise :class:`ConfigError` unless ``path`` (a file, or with ``directory`` a folder) can be written:
    it is not the other kind, and the nearest existing folder above it is a writable directory."""
    path = Path(path)
    if not directory and path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory; give a file path")
    if directory and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a directory; give a directory path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what} {str(path)!r} is not writable; give a writable path")
        return path
    parent = path.parent
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
    out = Path(output)
    if not out.exists():
        return
    for what, path in inputs:
        if isinstance(path, (str, Path)) and Path(path).exists() and os.path.samefile(out, path):
            raise ConfigError(f"output file {str(output)!r} is the {what} of this run; writing it would destroy the"
                              " input, so give another -o")


class ReplaceOnSuccess:
    """Write-then-rename: ``write`` goes to a temporary file beside ``path`` (created at the first write);
    :meth:`commit` renames it over ``path``; :meth:`abort` leaves ``path`` untouched and keeps the temporary
    file only if something was written (returning its path)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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


def replaceable_output(path: str) -> bool:
    """Whether ``-o path`` may be replaced: it does not exist, is empty, or begins like ``tqstar generate``'s own
    output (a text block ``### [method] ...`` or a JSONL response row), so a file tqstar did not write is never
    overwritten."""
    file = Path(path)
    if not file.is_file() or file.stat().st_size == 0:
        return True
    with file.open("rb") as fh:
        first = fh.readline(1 << 20)
    if first.startswith(b"### ["):
        return True
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and {"prompt", "method", "token_ids", "accounting"} <= set(row)
