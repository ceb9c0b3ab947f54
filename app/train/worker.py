"""The training worker: runs one job in its own process and reports through the run folder.

`ftstudio train JOB.yaml` lands here. SIGTERM saves a checkpoint and ends the run `stopped`; an
exception ends it `failed` with the error in the `done` event; everything else ends `finished`.

A job with several processes (see app.train.distributed) is led by this same process: it writes
the launcher configs, runs `accelerate launch`, waits for the ranks and writes the `done` event
from their outcome. Rank 0 writes every other event; the other ranks write nothing.
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
from typing import TYPE_CHECKING

from app.config import JobConfig
from app.train.runfolder import RunFolder

if TYPE_CHECKING:  # torch is imported only once the OpenMP wait policy is chosen (app.train.threads)
    from app.train.callbacks import StopFlag

log = logging.getLogger("ftstudio.worker")


class StopRequested(Exception):
    """SIGTERM arrived before training started: nothing to save."""


class NullEvents:
    """The event log of a rank other than 0: writes nothing."""

    def append(self, kind: str, **fields) -> dict:
        return {"kind": kind, **fields}


def _setup_logging(run: RunFolder, tag: str = "") -> None:
    """Our own messages go to worker.log even when the worker runs in a terminal."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
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
    from app.train import distributed
    from app.train.threads import choose_omp_wait_policy

    threads = choose_omp_wait_policy()  # before anything loads torch
    from app.train.callbacks import StopFlag

    job = job.with_run_folder()
    run = RunFolder(Path(job.output_dir))
    if distributed.in_launched_process():
        return _run_rank(job, run)
    run.create(job)
    _setup_logging(run)
    log.info("%s", threads)
    events = run.events
    stop = StopFlag()
    training = {"on": False}
    previous = _handle_stop_signals(stop, training)
    run.write_state(state="running", pid=os.getpid(), pgid=os.getpgid(0), host=socket.gethostname(),
                    started=round(time.time(), 3), ended=None, exit_code=None, error=None)
    state, error, code = "failed", None, 1
    try:
        _validate(job, events)
        plan = distributed.plan_for(job)
        if plan.needs_launch:
            state, error = _lead(job, run, plan, events, stop)
            code = 1 if state == "failed" else 0
        else:
            state = _train(job, run, events, stop, training)
            code = 0
    except StopRequested:
        state, code = "stopped", 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the run folder
        error = f"{type(exc).__name__}: {exc}"
        log.error("run failed:\n%s", traceback.format_exc())
    finally:
        _restore_signals(previous)
        events.append("done", state=state, error=error)
        run.write_state(state=state, ended=round(time.time(), 3), exit_code=code, error=error)
        log.info("run %s: %s", run.name, state)
    return code


def _handle_stop_signals(stop: StopFlag, training: dict) -> dict:
    """SIGTERM/SIGINT set the stop flag (and abort at once before training); returns the old handlers."""
    def on_sigterm(signum, frame):
        stop.requested = True
        log.info("stop requested (signal %s)", signum)
        if not training["on"]:
            raise StopRequested()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, on_sigterm)
    return previous


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _validate(job: JobConfig, events) -> None:
    from app.data.validate import validate_or_raise

    events.append("stage", name="validating", message=f"checking datasets {job.dataset}")
    validate_or_raise(job.dataset_dir, job.datasets, job.stage)


def _lead(job: JobConfig, run: RunFolder, plan, events, stop: StopFlag) -> tuple[str, str | None]:
    """Launch the ranks and wait; the run's outcome is rank 0's, unless a rank failed."""
    from app.train import distributed

    config = distributed.write_launch_files(job, plan, run.path)
    device = "GPU" if plan.on_gpu else "CPU"
    events.append("stage", name="launching", world_size=plan.world_size, strategy=plan.strategy,
                  message=f"launching {plan.world_size} {device} processes ({plan.strategy}) with accelerate; "
                          f"config in {config.name}")
    run.write_state(world_size=plan.world_size, strategy=plan.strategy, rank_state=None)
    failure = None
    try:
        distributed.launch(config, run.job_file)
    except StopRequested:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failed rank, or the launcher was signalled
        failure = exc
        log.info("launcher ended: %s: %s", type(exc).__name__, exc)
    finally:
        _handle_stop_signals(stop, {"on": True})  # the launcher had replaced our handler
    ranks = run.read_state()
    rank_state, rank_error = ranks.get("rank_state"), ranks.get("error")
    if failure is None:
        return (rank_state or "failed"), rank_error if rank_state else "rank 0 ended without reporting"
    if rank_state == "failed":
        return "failed", rank_error
    if stop.requested or type(failure).__name__ == "SignalException":
        return "stopped", None
    return "failed", f"a training process failed ({_short(failure)}); see worker.log"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {' '.join(line.strip() for line in text[:6])}"[:500]


def _run_rank(job: JobConfig, run: RunFolder) -> int:
    """One rank of a launched job. Rank 0 writes the events; with our own launcher as leader, the
    leader writes `done` and the final state (rank 0 reports its outcome as `rank_state`)."""
    from app.train import distributed
    from app.train.callbacks import StopFlag

    led = os.environ.get(distributed.LAUNCHED_ENV) == "1"
    writer = distributed.is_main_process()
    if writer and not led:  # launched by the user's own accelerate/torchrun: no leader of ours
        run.create(job)
    _setup_logging(run, tag=f"[rank {distributed.rank()}] ")
    events = run.events if writer else NullEvents()
    stop = StopFlag()
    training = {"on": False}
    previous = _handle_stop_signals(stop, training)
    if writer and not led:
        run.write_state(state="running", pid=os.getpid(), pgid=os.getpgid(0), host=socket.gethostname(),
                        started=round(time.time(), 3), ended=None, exit_code=None, error=None)
    state, error, code = "failed", None, 1
    try:
        if not led:
            _validate(job, events)
        state = _train(job, run, events, stop, training)
        code = 0
    except StopRequested:
        state, code = "stopped", 0
    except BaseException as exc:  # noqa: BLE001
        error = f"{type(exc).__name__}: {exc}"
        log.error("rank %d failed:\n%s", distributed.rank(), traceback.format_exc())
    finally:
        _restore_signals(previous)
        if writer and led:
            run.write_state(rank_state=state, error=error)
        elif writer:
            events.append("done", state=state, error=error)
            run.write_state(state=state, ended=round(time.time(), 3), exit_code=code, error=error)
    return code


def _train(job: JobConfig, run: RunFolder, events, stop: StopFlag, training: dict) -> str:
    """Load, prepare, train and save; returns "finished" or "stopped"."""
    import torch

    from app.models.source import resolve_model_path
    from app.train import distributed
    from app.train.callbacks import EventCallback
    from app.train.model_setup import apply_method, count_parameters, load_model, load_tokenizer
    from app.train.recipes import BUILDERS, prepare_data

    events.append("stage", name="loading_model", message=f"loading model {job.model_name_or_path or 'embedded'}")
    model_dir = resolve_model_path(job.model_name_or_path,
                                   lambda msg: events.append("stage", name="loading_model", message=msg))
    tokenizer = load_tokenizer(model_dir, job.template)

    events.append("stage", name="tokenizing", message="reading and tokenizing datasets")
    data = prepare_data(job, tokenizer)
    events.append("stage", name="tokenizing", message=f"tokenized {data.message}", rows=data.n_rows)
    log.info("data: %s", data.message)

    model = apply_method(job, load_model(job, model_dir, warn=lambda msg: events.append(
        "stage", name="loading_model", level="warning", message=msg)))
    trainable, total = count_parameters(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    world = distributed.world_size()
    ranks = f" x {world} processes" if world > 1 else ""
    events.append("stage", name="model_ready", trainable_params=trainable, total_params=total, device=device,
                  world_size=world,
                  message=f"{job.finetuning_type}: {trainable:,} of {total:,} parameters trainable "
                          f"({100 * trainable / max(total, 1):.2f}%) on {device}{ranks}")

    resume = None
    if job.resume_from_checkpoint is True:
        latest = run.latest_checkpoint()
        resume = str(latest) if latest else None
        if latest is None:
            log.info("resume_from_checkpoint: no complete checkpoint yet in %s; starting fresh", run.checkpoints)
    elif isinstance(job.resume_from_checkpoint, str):
        resume = job.resume_from_checkpoint

    callback = EventCallback(events, stop, is_writer=distributed.is_main_process())
    trainer = BUILDERS[job.stage](job, model, tokenizer, data, run.checkpoints, [callback])
    events.append("stage", name="training", resumed_from=resume,
                  message=f"training{' (resumed from ' + Path(resume).name + ')' if resume else ''}")
    training["on"] = True
    trainer.train(resume_from_checkpoint=resume)
    training["on"] = False

    events.append("stage", name="saving", message=f"saving to {run.adapter}")
    trainer.save_model(str(run.adapter))  # every rank: FSDP gathers the shards; the main process writes
    if distributed.is_main_process():
        tokenizer.save_pretrained(str(run.adapter))
    return "stopped" if stop.requested else "finished"
