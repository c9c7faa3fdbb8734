"""Which failures are expected (the user can act on them) and the one message each gets.

Bad input, a bad config, missing data, an unreadable or unwritable path, a download that cannot be made, a model
or device this machine lacks, a held lock: these end a command (p2p/cli.py) or a pipeline stage (flows/) with
one message saying what is wrong and what to do, never a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from p2p.data.download import DownloadError
from p2p.io import InputError
from p2p.lock import LockHeld
from p2p.models.generation import GenerationError
from p2p.models.loading import ModelUnavailable

#: The failures that get one message instead of a traceback.
EXPECTED: tuple[type[BaseException], ...] = (DownloadError, OSError, InputError, ValueError, ModelUnavailable,
                                             GenerationError, LockHeld)


def message(err: BaseException) -> str:
    """The failure's message: one line, except a download's, which lists each file to fetch on its own line."""
    if isinstance(err, DownloadError):
        return str(err)
    if isinstance(err, OSError):
        return os_error_line(err)
    return str(err).replace("\n", " ")


def os_error_line(err: OSError) -> str:
    """`<path>: <what>` for an OS error (permission denied, no space left, ...): the path it names (the destination
    of a rename), or the file that stands where a directory is needed."""
    name = err.filename2 if err.filename2 is not None else err.filename
    if name is None:  # raised with a message of ours, or no path involved
        return str(err).replace("\n", " ")
    path = Path(os.fsdecode(name))
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker}: is a file, where a directory is needed"
    return f"{path}: {(err.strerror or type(err).__name__).lower()}"
