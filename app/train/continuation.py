"""Continue a finished run for N more epochs: a new run that starts from the old run's result.

    ftstudio train --continue_from runs/identity-lora --more_epochs 2      (or the Train tab's button)

The new job is the old one with `num_train_epochs: N` (steps by epochs, `max_steps: -1`) in a new run
folder `<run>-more-N` beside the old one; a LoRA run keeps training its adapter (adapter_name_or_path),
a freeze/full run starts from its saved model (model_name_or_path). The old run is left as it is, so
both curves stay comparable. Resuming an unfinished run is `resume_from_checkpoint`, not this.
"""

from __future__ import annotations

from pathlib import Path

from app.config import JobConfig


def continue_job(run_dir: str | Path, epochs: float = 1.0) -> JobConfig:
    """The job that trains the finished run in `run_dir` for `epochs` more epochs."""
    run_dir = Path(run_dir).expanduser().resolve()
    job_file, adapter = run_dir / "job.yaml", run_dir / "adapter"
    if not job_file.is_file():
        raise ValueError(f"continue: {run_dir} is not a run folder (no job.yaml)")
    if not adapter.is_dir():
        raise ValueError(f"continue: {run_dir.name} has no saved result yet (adapter/); resume it instead")
    job = JobConfig.load(job_file)
    if job.stage == "rm":
        raise ValueError("continue: a reward model run cannot be continued this way; start a new rm run")
    changes: dict = dict(num_train_epochs=epochs, max_steps=-1, resume_from_checkpoint=None,
                         output_dir=str(_free_name(run_dir, epochs)), pissa_init=False)
    if job.finetuning_type == "lora":
        changes["adapter_name_or_path"] = str(adapter)
    else:
        changes["model_name_or_path"] = str(adapter)
    return job.replace(**changes)


def _free_name(run_dir: Path, epochs: float) -> Path:
    stem = f"{run_dir.name}-more-{epochs:g}"
    candidate, n = run_dir.parent / stem, 1
    while candidate.exists():
        n += 1
        candidate = run_dir.parent / f"{stem}-{n}"
    return candidate
