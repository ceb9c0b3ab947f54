"""Form values <-> JobConfig: the pure logic behind the Train tab's controls (no gradio here).

Controls hold what a widget can hold (a dropdown holds strings, an empty number is None, the
dataset picker a list); these functions translate both ways so that the one JobConfig stays the
source of truth for defaults, types and validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import ConfigError, JobConfig
from app.jobs.names import RunNameError, run_dir

NONE_CHOICE = "none"  # how a dropdown shows a None choice (quantization_bit)
# Fields the Train/Model tabs do not show as a plain control: the model comes from the Model
# tab's source picker, the dataset folder is the UI's own --dataset-dir.
SPECIAL_FIELDS = ("model_name_or_path", "dataset_dir")


def group_fields(group: str) -> list[str]:
    """JobConfig field names of one metadata group, in schema order."""
    return [n for n, f in JobConfig.spec().items() if f.metadata["group"] == group]


def form_fields() -> list[str]:
    """Every field that has a control, in schema order."""
    return [n for n in JobConfig.spec() if n not in SPECIAL_FIELDS]


def _optional(name: str) -> bool:
    return JobConfig.spec()[name].default is None


def choice_values(name: str) -> list[str] | None:
    choices = JobConfig.spec()[name].metadata.get("choices")
    if not choices:
        return None
    return [NONE_CHOICE if c is None else str(c) for c in choices]


def control_kind(name: str) -> str:
    """dropdown | multiselect | checkbox | number | textbox: which widget shows a field."""
    if name == "dataset":
        return "multiselect"
    if choice_values(name):
        return "dropdown"
    kind = JobConfig.field_type(name)
    if kind is bool and name != "resume_from_checkpoint":
        return "checkbox"
    if kind in (int, float) and not _optional(name):
        return "number"  # an empty gr.Number reads as 0: optional numbers use a textbox (empty = None)
    return "textbox"


def to_control(name: str, value: Any) -> Any:
    """A JobConfig value as its control holds it."""
    kind = control_kind(name)
    if kind == "multiselect":
        return [d.strip() for d in str(value or "").split(",") if d.strip()]
    if kind == "dropdown":
        return NONE_CHOICE if value is None else str(value)
    if kind == "textbox":
        return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return value


def from_control(name: str, value: Any) -> Any:
    """A control's value as raw input for `JobConfig.from_dict` (which coerces and validates)."""
    kind = control_kind(name)
    if kind == "multiselect":
        items = [value] if isinstance(value, str) else list(value or [])
        return ",".join(str(v).strip() for v in items if str(v).strip())
    if kind == "dropdown":
        return None if value in (None, NONE_CHOICE) else value
    if kind == "number" and isinstance(value, float) and value.is_integer() and JobConfig.field_type(name) is int:
        return int(value)
    if kind == "textbox" and isinstance(value, str) and not value.strip():
        return None
    return value


def form_dict(values: dict[str, Any], model: str | None, dataset_dir: str | Path,
              runs_dir: str | Path) -> dict[str, Any]:
    """The raw job mapping for control values; the run name becomes a folder directly under `runs_dir`
    (ConfigError naming output_dir for a name with '/', '..' or an absolute path: runs stay inside)."""
    data = {name: from_control(name, value) for name, value in values.items() if name in JobConfig.spec()}
    data["model_name_or_path"] = model
    data["dataset_dir"] = str(dataset_dir)
    out = data.get("output_dir")
    if isinstance(out, str) and out.strip():
        try:
            data["output_dir"] = str(run_dir(out, runs_dir))
        except RunNameError as exc:
            raise ConfigError([str(exc)]) from None
    return data


def form_to_job(values: dict[str, Any], model: str | None, dataset_dir: str | Path,
                runs_dir: str | Path) -> JobConfig:
    """Build and validate the job the form describes; raises ConfigError listing every problem."""
    data = form_dict(values, model, dataset_dir, runs_dir)
    if not data.get("dataset"):  # reported with the other fields' problems, not instead of them
        problems = ["dataset: pick at least one catalogue dataset"]
        try:
            JobConfig.from_dict(data | {"dataset": JobConfig().dataset})
        except ConfigError as exc:
            problems += exc.problems
        raise ConfigError(problems)
    return JobConfig.from_dict(data)


def job_to_controls(job: JobConfig) -> dict[str, Any]:
    """Control values that show `job` (for loading a YAML into the form)."""
    return {name: to_control(name, getattr(job, name)) for name in form_fields()}


def default_controls() -> dict[str, Any]:
    return job_to_controls(JobConfig())



def estimate_job(values: dict[str, Any], model: str | None, dataset_dir: str | Path,
                 runs_dir: str | Path) -> JobConfig:
    """The job for a memory or parameter estimate: like `form_to_job`, but no dataset or run name needed."""
    data = form_dict({k: v for k, v in values.items() if k != "output_dir"}, model, dataset_dir, runs_dir)
    if not data.get("dataset"):
        data["dataset"] = JobConfig().dataset
    return JobConfig.from_dict(data)
