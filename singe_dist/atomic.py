"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it.

A crash or a full disk mid-write leaves the previous file intact instead of a truncated one, which
is what makes checkpoints, plans and reports safe to overwrite during a long run. A write the
operating system refuses (no space left, quota exceeded, file too large, read-only or unwritable
directory) is a one-line :class:`~singe_dist.errors.SingeError` that names the file and says whether
the previous version is still there; the partial temporary file is removed. A process killed
mid-write leaves a ``.<name>.<random>.tmp`` file beside the target, never a damaged target:
:func:`remove_stale_temporaries` clears those when a run resumes.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from singe_dist.errors import SingeError

TEMP_SUFFIX = ".tmp"


def _temp_prefix(name: str) -> str:
    return f".{name}."


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    An :class:`OSError` on the way (from ``write`` too) becomes a one-line SingeError; ``path`` is
    then exactly as it was before the call.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; a report or plan must be readable like any file
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise write_error(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


def write_error(path: Path, exc: OSError) -> SingeError:
    """``cannot write <path>: No space left on device (ENOSPC); the previous version is intact``."""
    details = [errno.errorcode.get(exc.errno or 0, "")]
    other = Path(exc.filename).name if isinstance(exc.filename, str) else None
    if other and other != path.name and not other.startswith(_temp_prefix(path.name)):
        details.append(exc.filename)  # the culprit is another path: a parent folder that is a file, say
    reason = exc.strerror or str(exc) or type(exc).__name__
    detail = ", ".join(d for d in details if d)
    kept = "the previous version is intact" if path.is_file() else "nothing was written"
    return SingeError(f"cannot write {path}: {reason}{f' ({detail})' if detail else ''}; {kept}")


def _file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would give: the existing file's, else 0666 minus the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text), binary=False)


def remove_stale_temporaries(directory: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` of ``directory/<name>`` left.

    Call it only when no writer of those files runs (a job resuming its own run directory).
    Returns the files removed.
    """
    directory = Path(directory)
    removed = []
    for name in names:
        for stale in directory.glob(f"{_temp_prefix(name)}*{TEMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed
