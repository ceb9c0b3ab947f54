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
import traceback
from pathlib import Path

from app.config import ConfigError, JobConfig
from app.train.lifecycle import (
    RunContext,
    StopRequested,
    handle_stop_signals,
    is_stop,
    restore_signals,
    setup_logging,
    supervise,
)
from app.train.preflight import preflight
from app.train.runfolder import RunFolder

log = logging.getLogger("ftstudio.worker")


class NullEvents:
    """The event log of a rank other than 0: writes nothing."""

    def append(self, kind: str, **fields) -> dict:
        return {"kind": kind, **fields}


def run_job(job: JobConfig) -> int:
    """Run a job to its end; returns the process exit code (0 finished or stopped, 1 failed)."""
    from app.train import distributed
    from app.train.threads import choose_omp_wait_policy

    threads = choose_omp_wait_policy()  # before anything loads torch
    job = job.with_run_folder()
    run = RunFolder(Path(job.output_dir))
    if distributed.in_launched_process():
        return _run_rank(job, run)
    checked = not run.exists()  # a new run from a terminal: a mistake costs no folder, only the message
    if checked:
        problems = preflight(job)
        if problems:
            raise ConfigError(problems)
    run.create(job)
    setup_logging(run)
    log.info("%s", threads)

    def body(ctx: RunContext) -> tuple[str, str | None]:
        _validate(job, ctx.events, checked)
        plan = distributed.plan_for(job)
        if plan.needs_launch:
            return _lead(job, run, plan, ctx)
        return _train(job, run, ctx.events, ctx), None

    return supervise(run, body)


def _validate(job: JobConfig, events, checked: bool = False) -> None:
    """Everything that can be checked before the model loads (datasets row by row, val_size, model path,
    template): a ConfigError listing each problem, one line per key. `checked`: done already. The
    datasets are parsed once (app.train.data_cache): prepare_data reuses them."""
    events.append("stage", name="validating", message=f"checking datasets {job.dataset}")
    problems = [] if checked else preflight(job)
    if problems:
        raise ConfigError(problems)


def _lead(job: JobConfig, run: RunFolder, plan, ctx: RunContext) -> tuple[str, str | None]:
    """Launch the ranks and wait; the run's outcome is rank 0's, unless a rank failed."""
    from app.train import distributed

    events = ctx.events
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
        ctx.interruptible = False
        handle_stop_signals(ctx)  # the launcher had replaced our handler
    ranks = run.read_state()
    rank_state, rank_error = ranks.get("rank_state"), ranks.get("error")
    if failure is None:
        return (rank_state or "failed"), rank_error if rank_state else "rank 0 ended without reporting"
    if rank_state == "failed":
        return "failed", rank_error
    if ctx.stop.requested or _signalled(failure):
        return "stopped", None
    return "failed", f"a training process failed ({_short(failure)}); see worker.log"


def _signalled(failure: BaseException) -> bool:
    """Whether the launcher ended because it was signalled (Stop), not because a rank failed: torch's
    elastic agent raises SignalException; accelerate >= 1.16 turns that into SystemExit(128 + signal)."""
    if type(failure).__name__ == "SignalException":
        return True
    stops = {128 + sig for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    return isinstance(failure, SystemExit) and failure.code in stops


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {' '.join(line.strip() for line in text[:6])}"[:500]


def _run_rank(job: JobConfig, run: RunFolder) -> int:
    """One rank of a launched job. Rank 0 writes the events; with our own launcher as leader, the
    leader writes `done` and the final state (rank 0 reports its outcome as `rank_state`)."""
    from app.train import distributed

    led = os.environ.get(distributed.LAUNCHED_ENV) == "1"
    writer = distributed.is_main_process()
    if writer and not led:  # launched by the user's own accelerate/torchrun: no leader of ours
        run.create(job)
    setup_logging(run, tag=f"[rank {distributed.rank()}] ")
    if writer and not led:
        def body(ctx: RunContext) -> tuple[str, str | None]:
            _validate(job, ctx.events)
            return _train(job, run, ctx.events, ctx), None

        return supervise(run, body)
    ctx = RunContext(run, writes_state=writer)
    events = run.events if writer else NullEvents()
    previous = handle_stop_signals(ctx)
    state, error, code = "failed", None, 1
    try:
        state = _train(job, run, events, ctx)
        code = 0
    except BaseException as exc:  # noqa: BLE001
        if is_stop(exc):
            state, code = "stopped", 0
        else:
            error = f"{type(exc).__name__}: {exc}"
            log.error("rank %d failed:\n%s", distributed.rank(), traceback.format_exc())
    finally:
        restore_signals(previous)
        if distributed.is_local_main_process():  # rank 0; on other machines, their own first process
            run.write_state(rank_state=state, error=error)
    return code


def _train(job: JobConfig, run: RunFolder, events, ctx: RunContext) -> str:
    """Load, prepare, train and save; returns "finished" or "stopped"."""
    import torch

    from app.models.source import resolve_model_path
    from app.train import distributed
    from app.train.callbacks import EventCallback
    from app.train.frozen_linears import frozen_linears_packed
    from app.train.kernels import resolve_precision
    from app.train.memory_plan import plan_memory
    from app.train.model_setup import apply_method, count_parameters, load_model, load_tokenizer
    from app.train.recipes import BUILDERS, prepare_data
    from app.train.variants import apply_to_trainer

    job = resolve_precision(job)  # bf16 by default on GPUs that have it
    events.append("stage", name="loading_model", message=f"loading model {job.model_name_or_path or 'embedded'}")
    model_dir = resolve_model_path(job.model_name_or_path,
                                   lambda msg: events.append("stage", name="loading_model", message=msg))
    tokenizer = load_tokenizer(model_dir, job.template, job.enable_thinking)

    events.append("stage", name="tokenizing", message="reading and tokenizing datasets")
    data = prepare_data(job, tokenizer)
    events.append("stage", name="tokenizing", message=f"tokenized {data.message}", rows=data.n_rows)
    log.info("data: %s", data.message)

    job, estimate, note, switched = plan_memory(job, model_dir, data.train, torch.cuda.is_available())
    events.append("stage", name="memory", message=note, estimate_mb=round(estimate.total_mb) if estimate else None,
                  gradient_checkpointing=job.gradient_checkpointing, **({"level": "warning"} if switched else {}))
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

    callback = EventCallback(events, ctx.stop, is_writer=distributed.is_main_process())
    trainer = BUILDERS[job.stage](job, model, tokenizer, data, run.checkpoints, [callback])
    apply_to_trainer(job, trainer)  # LoRA+
    ctx.interruptible = False  # from here a stop signal only sets the flag: the Trainer saves and ends
    with frozen_linears_packed(job, model, world) as kernels:  # CPU LoRA: frozen weights on oneDNN
        log.info("kernels: %s", kernels)
        events.append("stage", name="training", resumed_from=resume, kernels=kernels,
                      message=f"training{' (resumed from ' + Path(resume).name + ')' if resume else ''}")
        trainer.train(resume_from_checkpoint=resume)
    stopped = ctx.stop.requested  # a stop that arrives during the final save must not abort it

    events.append("stage", name="saving", message=f"saving to {run.adapter}")
    with ctx.saving("adapter"):  # state.json says so: a Stop now waits for the save, never kills it
        trainer.save_model(str(run.adapter))  # every rank: FSDP gathers the shards; the main process writes
        if distributed.is_main_process():
            tokenizer.save_pretrained(str(run.adapter))
    return "stopped" if stopped else "finished"
