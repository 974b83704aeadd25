"""Crash-safe file writes: write beside the target, then swap it in with one atomic rename."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s directory; once the block has written it, it replaces `path`.

    The rename (`os.replace`) is atomic on POSIX and Windows, so readers see the old file or the new one,
    never a half-written one; if the block or the rename fails, the temporary file is removed and `path`
    is left as it was.
    """
    path = Path(path)
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
