"""Atomic writes: every output is written under a temporary name, then renamed.

A step killed half-way leaves no half-written file or folder behind; whatever was there before
stays intact until the new version is complete. A process killed with SIGKILL cannot remove its
temporary: temporaries are named ``.NAME.tmp-HOST-PID-RANDOM``, and the next write of ``NAME``
removes those of this host whose process no longer exists (another host's, or a live process's,
are left alone: several processes or nodes may share a run folder).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``.

    Works for files and for directories (e.g. a Zarr store). On error the temporary is removed
    and any previous ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_path("out.json") as tmp:            # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{_owner()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if tmp.is_dir() and path.exists():
            # Directories cannot be replaced in one rename: move the old one aside first.
            old = path.with_name(f".{path.name}.old-{_owner()}-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _owner() -> str:
    """``HOST-PID`` of this process (the host name without '-' or '.', so the name parses back)."""
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum()) or "host"
    return f"{host}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _sweep_stale(path: Path) -> None:
    """Remove temporaries of ``path`` left by dead processes of this host (see the module doc)."""
    host = _owner().rsplit("-", 1)[0]
    for kind in ("tmp", "old"):
        prefix = f".{path.name}.{kind}-"
        for p in path.parent.glob(f"{prefix}*"):
            parts = p.name[len(prefix):].split("-")
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue  # another host's, or a name from an older version: not ours to judge
            if not _alive(int(parts[1])):
                _remove(p)
