"""Problems found in dataset catalogues and files, reported all at once with file, row and field."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# A DataError never lists more than this many problems; the rest are summarised in one line.
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where it is (file, 1-based row, field) and what is wrong."""

    file: str
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.file]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts) + f": {self.message}"


class DataError(Exception):
    """Raised with every problem found, so that a user fixes a file in one pass, not one error at a time."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def cap_problems(problems: list[Problem], limit: int = MAX_PROBLEMS) -> list[Problem]:
    """Keep the first `limit` problems and add one line saying how many more there were."""
    if len(problems) <= limit:
        return problems
    extra = len(problems) - limit
    last = problems[limit]
    more = Problem(last.file, None, None, f"... and {extra} more problem{'s' if extra > 1 else ''}")
    return problems[:limit] + [more]


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as the user would type it: normalised, and relative when it was given relative."""
    return Path(os.path.normpath(os.fspath(path))).as_posix()
