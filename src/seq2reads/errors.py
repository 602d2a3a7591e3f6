"""User-facing errors.

A :class:`UserError` is a problem with the user's input (a file, a config value, a run directory).
The command line prints its message on one line and exits with status 2; it never shows a
traceback. The message names what is wrong and how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: one line saying what is wrong and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class Stopped(Exception):
    """Work stopped by a signal before it finished (e.g. SIGTERM during training); rerunning resumes it.

    The command line prints its message on one line and exits with ``128 + signal``.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def require_file(path, what: str, hint: str = "") -> None:
    """Raise :class:`UserError` unless ``path`` exists.

    Parameters
    ----------
    path : str or Path
        The file the user named.
    what : str
        What the file is for ("genome FASTA", "regions file", ...).
    hint : str
        Extra advice appended to the message.
    """
    from pathlib import Path

    if not Path(path).exists():
        raise UserError(f"{what} not found: {path}. Check the path in the config{(' (' + hint + ')') if hint else ''}.")
