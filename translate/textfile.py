"""Text files as the commands read and write them, line by line.

Reading: UTF-8 lines without their ends (LF or CRLF) or a leading byte-order mark; a
bad byte names its line. Writing (``translate -o``): a regular file is replaced
atomically and keeps its mode, a symlink's target is what gets replaced, and any other
kind of file (a device, a FIFO, /dev/stdout) is written in place; ``-`` is stdout.
"""

from __future__ import annotations

import os
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from translate.checkpoint import atomic_write

# Unicode categories that carry no text: controls, format characters (BOM, zero-width),
# unassigned and surrogate code points, and every kind of space or separator
NO_TEXT = {"Cc", "Cf", "Cn", "Cs", "Zs", "Zl", "Zp"}


class LineError(ValueError):
    """A line that cannot be read; the message names the file and the line."""


def has_text(line: str) -> bool:
    """False for a line of only spaces, controls and invisible characters (NUL, U+FEFF, ...)."""
    return any(unicodedata.category(c) not in NO_TEXT for c in line)


def iter_lines(stream: BinaryIO, name: str, *, errors: str = "strict", hint: str = "") -> Iterator[str]:
    """Lines of a binary UTF-8 stream as text, without line ends (LF or CRLF) or a leading BOM.

    A bad byte is a LineError naming the line and its offset (`hint` says what to do), or,
    with ``errors="replace"``, becomes U+FFFD. Lines are split at LF only, as in the
    files themselves: other Unicode line separators stay inside their line."""
    for number, raw in enumerate(stream, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
            if not raw:  # a file holding only a byte-order mark holds no line
                return
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if errors != "replace":
                raise LineError(f"{name}: line {number}: invalid UTF-8 at byte {err.start} of the line{hint}") from None
            yield raw.decode("utf-8", errors="replace")


def write_lines(f: BinaryIO, lines: Iterable[str], *, flush_each: bool = False) -> None:
    """Each line as UTF-8 with a LF; `flush_each` for a reader waiting on every line."""
    for line in lines:
        f.write(line.encode("utf-8") + b"\n")
        if flush_each:
            f.flush()
    f.flush()


def write_output(target: str, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on the binary stream that `target` names (see the module docstring)."""
    if target == "-":
        write(sys.stdout.buffer)
        return
    try:
        kind = os.stat(target).st_mode  # follows a symlink to what it points at
    except FileNotFoundError:
        kind = None
    if kind is not None and not stat.S_ISREG(kind):
        with open(target, "wb") as f:  # a device, FIFO or socket: write into it, never replace it
            write(f)
        return
    folder = Path(os.path.realpath(target)).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"there is no folder {folder} for the output {target}: create it first")
    atomic_write(target, write)


def count_lines(path: str) -> int | None:
    """Lines in a regular file (a final line without a newline counts), for the bar's total; None for a pipe."""
    if not os.path.isfile(path):
        return None
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n, last = n + block.count(b"\n"), block[-1:]
    return n + (last != b"\n")
