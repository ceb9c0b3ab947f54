"""Which exceptions are a user's mistake (a file, a key, a path) rather than a bug, and their one-line text.

A user's mistake is reported as its message alone, on the terminal and in the UI; a bug keeps its
traceback. The classes live in their own layers (DataError in app.data, ModelSourceError in app.models,
...): they are matched by name here so that this module imports nothing of the studio.
"""

from __future__ import annotations

import errno

# Raised with a message written for the user, naming the file, row, key or field.
USER_ERRORS = frozenset({"ConfigError", "DataError", "ModelSourceError", "AdapterError", "BaseMismatchError",
                         "RunNameError", "PreferenceError", "ExportError", "ServerError"})
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NO_SPACE_WORDS = ("no space left", "file too large", "filetoolarge", "storagefull", "disk quota")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_no_space(exc: BaseException) -> bool:
    """A write failed because the disk (or the file size limit) is full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return True
        if any(word in str(e).lower() for word in NO_SPACE_WORDS):
            return True
    return False


def report_user_error(exc: BaseException) -> str | None:
    """The message to show for a user's mistake, or None when `exc` is a bug (keep its traceback)."""
    if type(exc).__name__ in USER_ERRORS or any(type(b).__name__ in USER_ERRORS for b in type(exc).__mro__):
        return str(exc).strip()
    if is_no_space(exc):
        return f"no space left to write (disk full or file too large): {exc}"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return None
