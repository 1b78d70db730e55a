"""Atomic file writes: readers see a file's old version or its new one, never part of it.

The checkpoints, a run's ``config.json``, ``run.json`` and ``summary.txt``, and the cached
validation splits are all written this way. A temporary file named with :data:`TMP_PREFIX`
beside the target is written, flushed and fsynced, renamed over the target (``os.replace`` is
atomic within one file system), and the folder is fsynced so the rename survives a crash. A
kill leaves at most a stray temporary file, which readers skip by its prefix. No JAX here, so
the data modules can use it too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from jaxcnn.errors import RunError

__all__ = ["TMP_PREFIX", "atomic_write"]

#: The name of every temporary file :func:`atomic_write` makes starts with this.
TMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` (a str as UTF-8) so that readers see the old file or the new
    one, never part; the file is opened like an ordinary new one (mode 0o666 less the umask).
    Raises RunError naming ``path`` when it cannot be written (no such folder, not writable,
    disk full); the previous version is then intact."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    for _ in range(100):
        tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:  # no such folder, not writable, ...: not a traceback from os
            raise RunError(f"cannot write {path} ({e.strerror or e}); check that its folder "
                           f"exists and is writable") from None
        break
    else:
        raise RunError(f"cannot create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise RunError(f"cannot write {path} ({e.strerror or e}); the previous version is intact; "
                       f"check that the disk is not full") from None
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # e.g. the file system just went read-only
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
