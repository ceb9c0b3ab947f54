"""The life of one worker process in its run folder: logging, Stop, state.json and the `done` event.

Every kind of job (training, evaluation, ...) runs its body through `supervise`:

    code = supervise(run, lambda ctx: ("finished", None))

SIGTERM or SIGINT set `ctx.stop.requested`. Before the body says it is interruptible at a safe point
(`ctx.interruptible = False`, e.g. while the Trainer runs and saves at its own step boundaries), the
signal aborts at once with StopRequested: there is nothing to save yet. The body returns (state, error);
an exception ends the run `failed` with the error in the `done` event and the traceback in worker.log.
No torch here: this module is imported before the OpenMP wait policy is chosen.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.train.runfolder import RunFolder
from app.user_errors import is_no_space, report_user_error

log = logging.getLogger("ftstudio.worker")


class StopRequested(Exception):
    """SIGTERM arrived before the body reached a point where it can stop cleanly: nothing to save."""


def is_stop(exc: BaseException) -> bool:
    """A StopRequested, or an error a library raised because one arrived inside it (transformers' lazy
    imports re-raise anything as "Failed to import ..." with the original as the cause)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StopRequested):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class StopFlag:
    """Set from a SIGTERM handler; read by the body (the trainer callback) at its next safe point.

    The body also reports here when it starts and ends writing a checkpoint (`saving("checkpoint-40")`,
    `saving(None)`): the run's state.json then carries `saving`, and the manager's Stop waits for it
    instead of killing the process mid-save.
    """

    def __init__(self) -> None:
        self.requested = False
        self.report_saving: Callable[[str | None], None] = lambda what: None

    def saving(self, what: str | None) -> None:
        self.report_saving(what)


class RunContext:
    """What a body gets: the run folder, its event log and the stop flag."""

    def __init__(self, run: RunFolder, writes_state: bool = True):
        self.run = run
        self.events = run.events
        self.stop = StopFlag()
        # True: a stop signal raises StopRequested at once; False: it only sets the flag.
        self.interruptible = True
        self.writes_state = writes_state  # False on ranks other than 0 of a multi-process job
        self.stop.report_saving = self._report_saving

    def _report_saving(self, what: str | None) -> None:
        if self.writes_state:
            self.run.write_state(saving={"what": what, "since": round(time.time(), 3)} if what else None)

    @contextmanager
    def saving(self, what: str) -> Iterator[None]:
        """state.json says `saving` while the block runs (a Stop waits for it, up to its ceiling)."""
        self._report_saving(what)
        try:
            yield
        finally:
            self._report_saving(None)


def setup_logging(run: RunFolder, tag: str = "") -> None:
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
        if not _same_file(sys.stderr, run.log_file):  # a terminal: the traceback stays in worker.log
            stream.addFilter(lambda record: not getattr(record, "file_only", False))
        root.addHandler(stream)


def _same_file(stream, path: Path) -> bool:
    try:
        return path.exists() and os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):
        return False


def handle_stop_signals(ctx: RunContext) -> dict:
    """SIGTERM/SIGINT set the stop flag (and abort while `ctx.interruptible`); returns the old handlers."""
    def on_signal(signum, frame):
        ctx.stop.requested = True
        log.info("stop requested (signal %s)", signum)
        if ctx.interruptible:
            raise StopRequested()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, on_signal)
    return previous


def restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def mark_running(run: RunFolder) -> None:
    """state.json: this process runs the job (the manager's pid/pgid stay when it started us)."""
    own_group = os.getpgid(0) == os.getpid()  # a group leader: Stop may signal the whole group
    run.write_state(state="running", pid=os.getpid(), pgid=os.getpid() if own_group else None,
                    host=socket.gethostname(), started=round(time.time(), 3), ended=None, exit_code=None,
                    error=None, saving=None)


def describe_failure(exc: BaseException) -> str:
    """The `error` of a failed run: one readable line (or a few, one per problem), no traceback."""
    text = str(exc).strip()
    if is_no_space(exc):
        return (f"no space left to write (disk full or file too large): {type(exc).__name__}: {text[:300]}. "
                "Free some space, then Resume: the newest complete checkpoint is kept.")
    message = report_user_error(exc)
    return message if message is not None else f"{type(exc).__name__}: {text}"


def supervise(run: RunFolder, body: Callable[[RunContext], tuple[str, str | None]]) -> int:
    """Run `body` as this run folder's job; returns the exit code (0 finished or stopped, 1 failed)."""
    ctx = RunContext(run)
    previous = handle_stop_signals(ctx)
    mark_running(run)
    state, error, code = "failed", None, 1
    try:
        state, error = body(ctx)
        code = 1 if state == "failed" else 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the run folder
        if is_stop(exc):
            state, code = "stopped", 0
        else:
            error = describe_failure(exc)
            log.error("run failed:\n%s", traceback.format_exc(), extra={"file_only": True})
            log.error("run failed: %s", error)
    finally:
        restore_signals(previous)
        run.events.append("done", state=state, error=error)
        run.write_state(state=state, ended=round(time.time(), 3), exit_code=code, error=error, saving=None)
        log.info("run %s: %s", run.name, state)
        close_logging(run)
    return code


def close_logging(run: RunFolder) -> None:
    """Detach this run's worker.log, so a process that runs several jobs logs each into its own folder."""
    root = logging.getLogger()
    log_path = str(run.log_file.resolve())
    for handler in [h for h in root.handlers if getattr(h, "baseFilename", None) == log_path]:
        root.removeHandler(handler)
        handler.close()
