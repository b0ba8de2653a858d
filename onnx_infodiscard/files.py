"""Input paths checked before anything opens them: the one place that knows what a readable file is."""

from __future__ import annotations

import stat
from pathlib import Path

from .errors import InputError


def regular_file(path: str | Path, what: str, max_bytes: int | None = None) -> Path:
    """`path`, checked to be a regular file (not a FIFO, device or folder) of at most `max_bytes`
    before anything opens it: a FIFO would block the read, /dev/zero would never end."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a folder, not a {what} file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise InputError(f"{path}: is {kind}, not a regular file; give the {what} as a file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise InputError(
            f"{path}: {info.st_size / 2**20:.0f} MiB is over the {max_bytes / 2**20:.0f} MiB limit for a "
            f"{what}; give a smaller file"
        )
    return path
