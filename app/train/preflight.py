"""Every mistake in a training job that can be found before a model loads, found before it.

    problems = preflight(job)     # [] or ["dataset: data/x.json, row 3, field 'output': ...", ...]

Run by `ftstudio train` before it creates the run folder, by the Train tab's Start before it submits,
and by the worker before it loads anything: a typo costs a second, not a minute of model loading.
Each problem is one line that starts with the job key it concerns and names the file, row or field.
No torch, no transformers here.
"""

from __future__ import annotations

from pathlib import Path

from app.config import JobConfig
from app.data.errors import DataError
from app.data.validate import val_size_problem
from app.models.source import (
    EMBEDDED_ID,
    ModelSourceError,
    cache_root,
    embedded_gguf_path,
    is_embedded,
    looks_like_hub_id,
)
from app.train.data_cache import examples_for

MAX_SHOWN = 20  # problems listed; the rest are counted


def model_problem(name: str | None) -> str | None:
    """Why `model_name_or_path` cannot be used, without loading or downloading anything."""
    if is_embedded(name):
        if (cache_root() / "models" / EMBEDDED_ID / "config.json").is_file():
            return None
        try:
            embedded_gguf_path()
        except ModelSourceError as exc:
            return f"model_name_or_path: {exc}"
        return None
    assert name is not None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"model_name_or_path: {name} is a file; give the folder that holds config.json"
        if not (path / "config.json").is_file():
            return f"model_name_or_path: {name} has no config.json: not a transformers model folder"
        return None
    if looks_like_hub_id(name):
        return None  # fetched when the job starts; an offline machine says so then, naming the id
    return (f"model_name_or_path: {name!r} is neither an existing folder nor a Hugging Face id (org/name); "
            f"leave it empty for the embedded {EMBEDDED_ID}")


def template_problem(template: str | None) -> str | None:
    from app.data.render import BUILTIN_TEMPLATES

    if template is None or template in BUILTIN_TEMPLATES:
        return None
    path = Path(template).expanduser()
    if path.is_file():
        return None
    if path.suffix == ".jinja":
        return f"template: file {template} not found"
    return f"template: unknown template {template!r} (built-ins: {', '.join(BUILTIN_TEMPLATES)}; or a .jinja file)"


def file_problems(job: JobConfig) -> list[str]:
    problems = []
    if job.deepspeed and not Path(job.deepspeed).expanduser().is_file():
        problems.append(f"deepspeed: file {job.deepspeed} not found")
    resume = job.resume_from_checkpoint
    if isinstance(resume, str) and not Path(resume).expanduser().is_dir():
        problems.append(f"resume_from_checkpoint: checkpoint folder {resume} not found")
    return problems


def preflight(job: JobConfig) -> list[str]:
    """Problems of `job` found without loading a model: datasets (presence, fitness for the stage, every
    row), val_size against the row count, model path, template, files named by the job."""
    problems = [p for p in (model_problem(job.model_name_or_path), template_problem(job.template)) if p]
    problems += file_problems(job)
    try:  # parsed once per process: the worker's prepare_data reuses these rows (app.train.data_cache)
        rows, data_problems = len(examples_for(job)), []
    except DataError as exc:
        rows, data_problems = 0, exc.problems
    problems += [f"dataset: {p}" for p in data_problems]
    if not data_problems and job.stage != "pt":  # pre-training splits packed blocks, counted later
        problem = val_size_problem(job.val_size, rows)
        if problem:
            problems.append(problem)
    if len(problems) > MAX_SHOWN:
        problems = problems[:MAX_SHOWN] + [f"... and {len(problems) - MAX_SHOWN} more problems"]
    return problems
