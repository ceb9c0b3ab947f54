"""The training worker: runs one job in its own process and reports through the run folder.

`ftstudio train JOB.yaml` lands here. SIGTERM saves a checkpoint and ends the run `stopped`; an
exception ends it `failed` with the error in the `done` event; everything else ends `finished`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from app.config import JobConfig
from app.train.runfolder import RunFolder

log = logging.getLogger("ftstudio.worker")


class StopRequested(Exception):
    """SIGTERM arrived before training started: nothing to save."""


def _setup_logging(run: RunFolder) -> None:
    """Our own messages go to worker.log even when the worker runs in a terminal."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_path = str(run.log_file.resolve())
    stdout_is_log = _same_file(sys.stdout, run.log_file)
    if not any(getattr(h, "baseFilename", None) == log_path for h in root.handlers) and not stdout_is_log:
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setFormatter(fmt)
        root.addHandler(handler)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        root.addHandler(stream)


def _same_file(stream, path: Path) -> bool:
    try:
        return path.exists() and os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):
        return False


def run_job(job: JobConfig) -> int:
    """Run a job to its end; returns the process exit code (0 finished or stopped, 1 failed)."""
    import torch

    from app.data.validate import validate_or_raise
    from app.models.source import resolve_model_path
    from app.train.callbacks import EventCallback, StopFlag
    from app.train.model_setup import apply_method, count_parameters, load_model, load_tokenizer
    from app.train.recipes import BUILDERS, prepare_data

    job = job.with_run_folder()
    run = RunFolder(Path(job.output_dir))
    run.create(job)
    _setup_logging(run)
    events = run.events
    stop = StopFlag()
    training = {"on": False}

    def on_sigterm(signum, frame):
        stop.requested = True
        log.info("stop requested (signal %s)", signum)
        if not training["on"]:
            raise StopRequested()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)

    run.write_state(state="running", pid=os.getpid(), pgid=os.getpgid(0), host=socket.gethostname(),
                    started=round(time.time(), 3), ended=None, exit_code=None, error=None)
    state, error, code = "failed", None, 1
    try:
        events.append("stage", name="validating", message=f"checking datasets {job.dataset}")
        validate_or_raise(job.dataset_dir, job.datasets, job.stage)

        events.append("stage", name="loading_model", message=f"loading model {job.model_name_or_path or 'embedded'}")
        model_dir = resolve_model_path(job.model_name_or_path,
                                       lambda msg: events.append("stage", name="loading_model", message=msg))
        tokenizer = load_tokenizer(model_dir, job.template)

        events.append("stage", name="tokenizing", message="reading and tokenizing datasets")
        data = prepare_data(job, tokenizer)
        events.append("stage", name="tokenizing", message=f"tokenized {data.message}", rows=data.n_rows)
        log.info("data: %s", data.message)

        model = apply_method(job, load_model(job, model_dir))
        trainable, total = count_parameters(model)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        events.append("stage", name="model_ready", trainable_params=trainable, total_params=total, device=device,
                      message=f"{job.finetuning_type}: {trainable:,} of {total:,} parameters trainable "
                              f"({100 * trainable / max(total, 1):.2f}%) on {device}")

        resume = None
        if job.resume_from_checkpoint is True:
            latest = run.latest_checkpoint()
            resume = str(latest) if latest else None
            if latest is None:
                log.info("resume_from_checkpoint: no complete checkpoint yet in %s; starting fresh", run.checkpoints)
        elif isinstance(job.resume_from_checkpoint, str):
            resume = job.resume_from_checkpoint

        callback = EventCallback(events, stop)
        trainer = BUILDERS[job.stage](job, model, tokenizer, data, run.checkpoints, [callback])
        events.append("stage", name="training", resumed_from=resume,
                      message=f"training{' (resumed from ' + Path(resume).name + ')' if resume else ''}")
        training["on"] = True
        trainer.train(resume_from_checkpoint=resume)
        training["on"] = False

        events.append("stage", name="saving", message=f"saving to {run.adapter}")
        trainer.save_model(str(run.adapter))
        tokenizer.save_pretrained(str(run.adapter))
        state, code = ("stopped" if stop.requested else "finished"), 0
    except StopRequested:
        state, code = "stopped", 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the run folder
        error = f"{type(exc).__name__}: {exc}"
        log.error("run failed:\n%s", traceback.format_exc())
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        events.append("done", state=state, error=error)
        run.write_state(state=state, ended=round(time.time(), 3), exit_code=code, error=error)
        log.info("run %s: %s", run.name, state)
    return code
