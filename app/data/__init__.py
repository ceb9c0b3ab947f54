"""Datasets: the catalogue (dataset_info.json), file formats, validation, rendering through chat templates.

No gradio and no model imports here: the worker, the CLI and the UI all use this package.
"""

from app.data.catalogue import DatasetSpec, load_catalogue, register_dataset
from app.data.errors import DataError, Problem
from app.data.formats import load_examples
from app.data.render import RenderStats, resolve_template, to_dpo_rows, tokenize_pt, tokenize_sft
from app.data.validate import (
    check_datasets,
    count_rows,
    load_datasets,
    main_check,
    val_size_problem,
    validate_or_raise,
)

__all__ = [
    "DataError",
    "DatasetSpec",
    "Problem",
    "RenderStats",
    "check_datasets",
    "count_rows",
    "load_catalogue",
    "load_datasets",
    "load_examples",
    "main_check",
    "register_dataset",
    "resolve_template",
    "to_dpo_rows",
    "tokenize_pt",
    "tokenize_sft",
    "val_size_problem",
    "validate_or_raise",
]
