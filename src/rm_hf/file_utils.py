"""File helpers: crash-safe writes (write beside the target, then swap it in with one atomic rename) and a line
reader that refuses an overlong line without reading it whole."""

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

# A writer touches its temporary with every write, and ours write as soon as they create it, so one untouched for
# this long belongs to a writer that was killed (`kill -9`, power cut) before it could remove it. We judge by age
# rather than by a PID in the name: a PID means nothing to another host or PID namespace sharing the folder (NFS,
# containers), where a live writer would look dead, and a reused PID makes a dead one look alive.
STALE_TEMPORARY_SECONDS = 15 * 60

# Default cap on the length of a line the data readers read, far above the real data (lines of about 100 bytes), so
# that a damaged or foreign file fails fast instead of filling memory.
MAX_LINE_BYTES = 1 << 20


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s directory; once the block has written it, it replaces `path`.

    The rename (`os.replace`) is atomic on POSIX and Windows, so readers see the old file or the new one,
    never a half-written one; if the block or the rename fails, the temporary file is removed and `path`
    is left as it was. Temporaries that killed writers left for `path` are removed first, and the folder is
    fsynced after the rename so that the new file, not the old one, survives a power cut.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp's 0600 would make the file unreadable to others sharing it
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def remove_stale_temporaries(path: str | os.PathLike, max_age: float = STALE_TEMPORARY_SECONDS) -> None:
    """Remove the temporaries `atomic_path` made for `path` that nobody has written to for `max_age` seconds.

    Best effort: a folder or file we may not touch is left as it is. Should a writer stalled that long wake up,
    its rename fails and its save raises; the target is never damaged.
    """
    path = Path(path)
    # `.{name}.{random}.tmp` with a random part without dots, so `name.bak`'s temporaries never match `name`
    ours = re.compile(rf"\.{re.escape(path.name)}\.[^.]+\.tmp")
    cutoff = time.time() - max_age
    with suppress(OSError):  # a folder we cannot list (or that does not exist)
        for candidate in path.parent.iterdir():
            if not ours.fullmatch(candidate.name):
                continue
            with suppress(OSError):  # removed meanwhile by another process, or not ours to remove
                if candidate.lstat().st_mtime < cutoff:
                    candidate.unlink()
                    logger.warning("Removed %s, left by an interrupted save of %s.", candidate, path.name)


def _fsync_directory(directory: Path) -> None:
    # A rename lives in the folder's entries, which the file's own fsync does not write. POSIX only: Windows
    # cannot open a folder this way and some file systems refuse to fsync one; both are skipped.
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def capped_lines(
    f: BinaryIO, max_line_bytes: int, line_error: Callable[[int, str, str], Exception]
) -> Iterator[tuple[int, bytes]]:
    """Yield `(line number from 1, line as read, newline included)` for each line of a binary file.

    A line of more than `max_line_bytes` bytes, its newline not counted, raises
    `line_error(line number, its start, what was expected)` once `max_line_bytes + 1` of its bytes are read: it is
    never read whole. The readers' format errors take these arguments after the file's name.
    """
    for number, raw in enumerate(iter(partial(f.readline, max_line_bytes + 1), b""), start=1):
        if len(raw.removesuffix(b"\n")) > max_line_bytes:
            expected = f"a line of at most {max_line_bytes} bytes (raise max_line_bytes / --max_line_bytes)"
            raise line_error(number, raw[:80].decode("utf-8", errors="replace"), expected)
        yield number, raw
