"""Checking datasets before a job starts, and the `ftstudio data check` command behind it."""

from __future__ import annotations

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


def load_datasets(
    dataset_dir: str | os.PathLike[str], names: list[str], stage: str, max_samples: int | None = None
) -> list[dict[str, Any]]:
    """The examples of every named dataset for `stage`, concatenated in order; DataError lists every problem.

    `max_samples` applies to each dataset, as in LLaMA-Factory.
    """
    specs = load_catalogue(dataset_dir)
    problems: list[Problem] = []
    examples: list[dict[str, Any]] = []
    if not names:
        problems.append(Problem(display_path(dataset_dir), None, None, "no dataset selected"))
    for name in names:
        if name not in specs:
            problems.append(_unknown(dataset_dir, name, specs))
            continue
        try:
            examples += load_examples(specs[name], stage, max_samples)
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(cap_problems(problems))
    return examples


def check_datasets(dataset_dir: str | os.PathLike[str], names: list[str], stage: str | None) -> list[Problem]:
    """Every problem in the named datasets for `stage` (None: each dataset's own stage); [] when all load."""
    try:
        specs = load_catalogue(dataset_dir)
    except DataError as e:
        return e.problems
    problems: list[Problem] = []
    for name in names:
        if name not in specs:
            problems.append(_unknown(dataset_dir, name, specs))
            continue
        spec = specs[name]
        try:
            load_examples(spec, stage or spec.stage)
        except DataError as e:
            problems += e.problems
    return problems


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
