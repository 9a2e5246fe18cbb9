"""Output folders checked for writing before anything loads.

A read-only ``--out``, a ``--out`` that names a file, or ``train.output_dir=/proc/x`` used
to fail with a traceback after minutes of model loading. :func:`check_writable` tries what
the command will do -- create the folder's nearest existing parent's child, write a file --
with a probe file that it removes, so a read-only mount, a pseudo file system and missing
permissions are all found the same way (``os.access`` says yes to root on a read-only mount).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_writable(path: str | Path, what: str) -> None:
    """Refuse (UserError) a folder ``path`` that cannot be created or written in; nothing is
    left behind (a probe file in the folder, or in its nearest existing parent, is removed)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: choose a folder")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise UserError(f"{what} {path} cannot be created: {base} is a file, not a folder")
    if str(base.resolve()).startswith(("/proc", "/sys")):
        raise UserError(f"{what} {path} is on a pseudo file system ({base}): choose a folder on a disk")
    try:
        fd, probe = tempfile.mkstemp(prefix=".whisper-tune-write-check.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"{what} {path} cannot be written ({e.strerror or e} in {base}): choose a writable folder"
        ) from None
