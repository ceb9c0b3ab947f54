"""Checking datasets before a job starts, and the `ftstudio data check` command behind it."""

from __future__ import annotations

import math
import os
import sys
from typing import Any, TextIO

from app.data.catalogue import CATALOGUE_NAME, DatasetSpec, load_catalogue
from app.data.errors import DataError, Problem, cap_problems, display_path
from app.data.formats import load_examples


def _unknown(dataset_dir: str | os.PathLike[str], name: str, specs: dict[str, DatasetSpec]) -> Problem:
    known = ", ".join(specs) or "(none)"
    where = display_path(os.path.join(os.fspath(dataset_dir), CATALOGUE_NAME))
    return Problem(where, None, name, f"unknown dataset {name!r} (known datasets: {known})")


def _load_named(dataset_dir: str | os.PathLike[str], specs: dict[str, DatasetSpec], names: list[str],
                stage: str | None, max_samples: int | None = None) -> tuple[list[dict[str, Any]], list[Problem]]:
    """(examples of every named set, concatenated in order; every problem). stage None: each set's own."""
    examples: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for name in names:
        if name not in specs:
            problems.append(_unknown(dataset_dir, name, specs))
            continue
        spec = specs[name]
        try:
            examples += load_examples(spec, stage or spec.stage, max_samples)
        except DataError as e:
            problems += e.problems
    return examples, problems


def _none_selected(dataset_dir: str | os.PathLike[str], names: list[str]) -> list[Problem]:
    return [] if names else [Problem(display_path(dataset_dir), None, None, "no dataset selected")]


def load_datasets(
    dataset_dir: str | os.PathLike[str], names: list[str], stage: str, max_samples: int | None = None
) -> list[dict[str, Any]]:
    """The examples of every named dataset for `stage`, concatenated in order; DataError lists every problem.

    `max_samples` applies to each dataset, as in LLaMA-Factory.
    """
    specs = load_catalogue(dataset_dir)
    examples, problems = _load_named(dataset_dir, specs, names, stage, max_samples)
    problems = _none_selected(dataset_dir, names) + problems
    if problems:
        raise DataError(cap_problems(problems))
    return examples


def check_datasets(dataset_dir: str | os.PathLike[str], names: list[str], stage: str | None) -> list[Problem]:
    """Every problem in the named datasets for `stage` (None: each dataset's own stage); [] when all load."""
    try:
        specs = load_catalogue(dataset_dir)
    except DataError as e:
        return e.problems
    return _load_named(dataset_dir, specs, names, stage)[1]


def count_rows(
    dataset_dir: str | os.PathLike[str], names: list[str], stage: str | None, max_samples: int | None = None
) -> tuple[int, list[Problem]]:
    """(usable rows over every named dataset for `stage`, after max_samples per set; every problem)."""
    try:
        specs = load_catalogue(dataset_dir)
    except DataError as e:
        return 0, e.problems
    examples, problems = _load_named(dataset_dir, specs, names, stage, max_samples)
    return len(examples), cap_problems(_none_selected(dataset_dir, names) + problems)


def val_size_problem(val_size: float, rows: int) -> str | None:
    """Why `val_size` cannot split `rows` rows into a training and an eval part (None when it can)."""
    if not val_size:
        return None
    if rows < 2:
        return f"val_size: {val_size:g} needs at least 2 rows to split, the datasets have {rows}"
    if val_size >= 1 and int(val_size) >= rows:
        return (f"val_size: {int(val_size)} eval rows leave no training rows out of {rows} "
                f"(use a count below {rows}, or a fraction such as 0.1)")
    if val_size < 1 and rows - math.ceil(val_size * rows) < 1:
        return f"val_size: {val_size:g} of {rows} rows leaves no training rows"
    return None


def validate_or_raise(dataset_dir: str | os.PathLike[str], names: list[str], stage: str | None) -> None:
    """Raise DataError (first 50 problems, then a count) unless every named dataset loads for `stage`."""
    problems = check_datasets(dataset_dir, names, stage)
    if not names:
        problems.append(Problem(display_path(dataset_dir), None, None, "no dataset selected"))
    if problems:
        raise DataError(cap_problems(problems))


def main_check(dataset_dir: str, names: list[str], stage: str | None = None, out: TextIO | None = None) -> int:
    """`ftstudio data check`: one line per dataset (ok, its stage and row count, or FAIL and its problems).

    No names means every dataset in the catalogue. Returns 0 when all are fine, else 1.
    """
    out = out or sys.stdout
    try:
        specs = load_catalogue(dataset_dir)
    except DataError as e:
        for problem in e.problems:
            print(f"FAIL  {problem}", file=out)
        return 1
    failed = False
    for name in names or list(specs):
        if name not in specs:
            print(f"FAIL  {name}  {_unknown(dataset_dir, name, specs)}", file=out)
            failed = True
            continue
        spec = specs[name]
        use = stage or spec.stage
        try:
            n_rows = len(load_examples(spec, use))
        except DataError as e:
            failed = True
            print(f"FAIL  {name}  {use}", file=out)
            for problem in cap_problems(e.problems, 20):
                print(f"      {problem}", file=out)
            continue
        print(f"ok    {name}  {use}  {n_rows} rows", file=out)
    return 1 if failed else 0
