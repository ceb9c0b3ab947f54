"""`ftstudio runs`: the Train tab's run list, Stop, Resume and queue, from a terminal.

    ftstudio runs list                      every run: state, step, loss
    ftstudio runs submit JOB.yaml [--name N]   queue a job (it starts when the queue reaches it)
    ftstudio runs stop NAME                 Stop: it saves a checkpoint and ends `stopped`
    ftstudio runs resume NAME               continue from the newest complete checkpoint
    ftstudio runs watch                     drive the queue until nothing is queued or running

A studio that is open drives the same queue: `submit` with no studio open needs `watch` (or the
studio) for the run to start.
"""

from __future__ import annotations

import argparse
import sys
import time

from app.jobs.manager import JobManager
from app.jobs.names import run_dir
from app.jobs.process import stop_ceiling_s
from app.train.runfolder import ACTIVE_STATES


def add_parser(sub) -> None:
    runs = sub.add_parser("runs", help="list, queue, stop and resume runs (what the Train tab does)")
    runs.add_argument("--runs-dir", default=None, help="runs folder (default: $FTSTUDIO_RUNS or runs)")
    actions = runs.add_subparsers(dest="runs_command", required=True)
    actions.add_parser("list", help="every run with its state, step and loss")
    submit = actions.add_parser("submit", help="queue a job file as a new run")
    submit.add_argument("job", help="a YAML job file")
    submit.add_argument("--name", help="run name (a folder inside the runs folder)")
    for action, text in (("stop", "stop a run (it saves first)"), ("resume", "resume a stopped or failed run")):
        actions.add_parser(action, help=text).add_argument("name")
    watch = actions.add_parser("watch", help="start queued runs one after the other until none is left")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    runs.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import os

    manager = JobManager(args.runs_dir or os.environ.get("FTSTUDIO_RUNS", "runs"))
    try:
        return _run(manager, args)
    except KeyError as exc:  # an unknown run name: the message names it and the runs folder
        print(f"ftstudio runs {args.runs_command}: {exc.args[0]}", file=sys.stderr)
        return 2


def _run(manager: JobManager, args: argparse.Namespace) -> int:
    command = args.runs_command
    if command == "list":
        manager.refresh()
        for s in manager.summaries():
            step = "" if s.step is None else f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step)
            loss = "" if s.loss is None else f"{s.loss:.4f}"
            print(f"{s.name:32} {s.state:10} {s.stage:5} {step:>10} {loss:>8}  {s.error or ''}".rstrip())
        return 0
    if command == "submit":
        from app.config import ConfigError, JobConfig
        from app.train.preflight import preflight

        job = JobConfig.load(args.job)
        if args.name:
            job = job.replace(output_dir=str(run_dir(args.name, manager.runs_dir)))
        problems = preflight(job)
        if problems:
            raise ConfigError(problems)
        run = manager.submit(job)
        print(f"{run.name}: {run.read_state().get('state')} ({run.path})")
        return 0
    if command == "stop":
        state = manager.run(args.name).read_state().get("state")
        print(f"stopping {args.name} ({state}); waiting up to {stop_ceiling_s():.0f} s while it saves",
              file=sys.stderr)
        manager.stop(args.name, wait=True)
        print(f"{args.name}: {manager.run(args.name).read_state().get('state')}")
        return 0
    if command == "resume":
        state = manager.run(args.name).read_state().get("state")
        if state not in ("stopped", "failed"):
            print(f"runs resume: {args.name} is {state}; only a stopped or failed run can be resumed",
                  file=sys.stderr)
            return 2
        try:
            run = manager.resume(args.name)
        except RuntimeError as exc:
            print(f"runs resume: {exc}", file=sys.stderr)
            return 2
        print(f"{run.name}: {run.read_state().get('state')}")
        return 0
    # watch: the same loop as the studio's scheduler thread, in the foreground
    while True:
        manager.refresh()
        states = [s.state for s in manager.summaries()]
        if not any(state in ACTIVE_STATES for state in states):
            return 0
        time.sleep(max(args.interval, 0.2))
