"""The file system's errors are the user's: one line naming the path, the cause and the fix.

A full disk, a read-only mount, a name too long, a permission: ``writing(path)`` turns the
error a writer raises (an ``OSError``, or the text of one inside safetensors' and torch's own
exception types) into ``CannotWrite``, which the CLI prints as one line with exit code 2."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from obert.errors import ObertError


class CannotWrite(ObertError):
    """The file system refused a write: the command's output is not there, nothing half-made."""


# errno -> (the cause, how to fix it); ``{flag}`` is the option that named the path
_CAUSES = {
    errno.ENOSPC: ("no space left on device", "free space or choose another {flag}"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another {flag}"),
    errno.ENAMETOOLONG: ("the name is too long for the file system", "choose a shorter {flag}"),
    errno.EACCES: ("permission denied", "choose another {flag}"),
    errno.EPERM: ("operation not permitted", "choose another {flag}"),
    errno.EROFS: ("read-only file system", "choose another {flag}"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another {flag}"),
    errno.ELOOP: ("too many levels of symbolic links", "choose another {flag}"),
}

# OSError's text inside other exception types: Rust's io::Error (safetensors) and torch's
# file writer
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_STRERROR = re.compile(r"strerror: (.+?)\s*$")
_TORCH_WRITE = ("unexpected pos", "file write failed")  # torch's writer names no errno
_STRERRORS = {os.strerror(n): n for n in errno.errorcode}


def write_error(path: str | os.PathLike, e: OSError, flag: str = "--output",
                inside: bool = False) -> CannotWrite:
    """The one line for a write to ``path`` (``inside``: into the folder ``path``) that failed."""
    cause, fix = _CAUSES.get(e.errno, ((e.strerror or str(e) or type(e).__name__).lower(),
                                       "choose another {flag}"))
    if e.errno == errno.ENAMETOOLONG:
        cause += f" ({len(Path(path).name.encode())} bytes{_name_room(Path(path))})"
    return CannotWrite(f"cannot write {'in ' if inside else ''}{path}: {cause}; "
                       + fix.format(flag=flag))


def _name_room(path: Path) -> str:
    """How long a name may be there, obert's temporary name ``.NAME.tmp-PID-XXXXXXXX`` counted."""
    try:
        limit = os.pathconf(_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        return ""
    return f"; names of at most {limit - len(f'..tmp-{os.getpid()}-') - 8} bytes fit there"


def _existing(path: Path) -> Path:
    """``path`` or its nearest folder that exists."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def as_os_error(e: BaseException, where: Path) -> OSError | None:
    """The file-system error ``e`` is, or None when it is not one (a bug, an interrupt)."""
    if isinstance(e, OSError):
        return e
    if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: not the disk's
        return None
    text = str(e)
    m = _OS_ERROR.search(text)
    if m:
        n = int(m.group(1))
        return OSError(n, os.strerror(n))
    m = _STRERROR.search(text)
    if m and m.group(1) in _STRERRORS:
        n = _STRERRORS[m.group(1)]
        return OSError(n, os.strerror(n))
    if any(s in text for s in _TORCH_WRITE):  # a short write: a full disk, or an I/O error
        try:
            full = shutil.disk_usage(_existing(where)).free < 2**20
        except OSError:
            full = False
        n = errno.ENOSPC if full else errno.EIO
        return OSError(n, os.strerror(n))
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike, flag: str = "--output") -> Iterator[None]:
    """Inside the block, a file-system error becomes ``CannotWrite`` naming ``path``; other
    errors pass unchanged."""
    try:
        yield
    except ObertError:
        raise
    except Exception as e:
        err = as_os_error(e, Path(path))
        if err is None:
            raise
        raise write_error(path, err, flag) from None
