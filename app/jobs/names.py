"""Run names typed in the UI (or given to `ftstudio runs submit`) stay inside the runs folder."""

from __future__ import annotations

import re
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9\u4e00-\u9fff][A-Za-z0-9\u4e00-\u9fff_.+=@-]{0,127}$")


class RunNameError(ValueError):
    """A run name that would leave the runs folder (or is not a usable folder name); says why."""


def check_run_name(name: str, runs_dir: str | Path) -> str:
    """`name` stripped, or RunNameError naming output_dir and the runs folder."""
    text = (name or "").strip()
    where = Path(runs_dir).expanduser().resolve()
    if "/" in text or "\\" in text or text in (".", "..") or ".." in text:
        raise RunNameError(f"output_dir: {text!r} must be a plain run name, without '/', '\\' or '..': runs are "
                           f"folders directly inside the runs folder {where}")
    if not NAME.match(text):
        raise RunNameError(f"output_dir: {text!r} is not a usable run name: use letters, digits, '_', '-', '.' "
                           f"(up to 128, starting with a letter or digit); it becomes a folder in {where}")
    return text


def run_dir(name: str, runs_dir: str | Path) -> Path:
    """The folder of run `name` inside `runs_dir` (RunNameError when the name would leave it)."""
    return Path(runs_dir).expanduser().resolve() / check_run_name(name, runs_dir)


def inside_runs(path: str | Path, runs_dir: str | Path) -> bool:
    """True when `path` is a folder directly inside `runs_dir` (where the manager looks for runs)."""
    return Path(path).expanduser().resolve().parent == Path(runs_dir).expanduser().resolve()
