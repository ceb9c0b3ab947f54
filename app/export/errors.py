"""Errors the export layer raises for things a user can fix."""

from __future__ import annotations

from collections.abc import Callable

# progress(fraction in [0, 1], message): every long step of the export layer reports through this.
Progress = Callable[[float, str], None]


class ExportError(RuntimeError):
    """A clear, user-fixable export problem (unknown architecture, missing extra, failed fidelity...)."""


def scaled(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A progress callback that maps a sub-step's [0, 1] onto [start, end] of the parent's."""
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return report


def report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)
