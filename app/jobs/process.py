"""Stopping and reaping the processes the studio starts: training and evaluation workers, the API server.

One rule for all of them:

    SIGTERM (to the process group when the process leads one, else to the process alone)
    -> wait `grace_s` for it to end; while it reports that it is saving (`busy()`), keep waiting, up to
       `ceiling_s` after the SIGTERM: a checkpoint is never cut in half by a SIGKILL
    -> SIGKILL, to the group only if something in it is still alive (never to a group that is gone,
       whose id may already belong to someone else)
    -> reap our own child (no zombies).

The defaults are settings: FTSTUDIO_STOP_GRACE_S and FTSTUDIO_STOP_CEILING_S (`ftstudio webui
--stop-ceiling`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

DEFAULT_GRACE_S = 180.0  # to finish the current step and reach a save point (the launcher waits 120 s for ranks)
DEFAULT_CEILING_S = 900.0  # hard limit, even while the worker reports it is saving
POLL_S = 0.2


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def stop_grace_s() -> float:
    return _env_seconds("FTSTUDIO_STOP_GRACE_S", DEFAULT_GRACE_S)


def stop_ceiling_s() -> float:
    return _env_seconds("FTSTUDIO_STOP_CEILING_S", DEFAULT_CEILING_S)


def process_alive(pid: int | None, started: float | None = None) -> bool:
    """True if `pid` runs and is not a zombie; with `started` (unix time), also not a recycled pid."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or proc.create_time() <= started + 5
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def group_alive(pgid: int | None) -> list[int]:
    """The live (non-zombie) processes of process group `pgid`."""
    if not pgid:
        return []
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


def send(pid: int | None, pgid: int | None, sig: int) -> bool:
    """Signal the group `pgid` (when given) or the process `pid`; False when there was nobody to signal."""
    try:
        if pgid:
            os.killpg(pgid, sig)
        elif pid:
            os.kill(pid, sig)
        else:
            return False
        return True
    except (ProcessLookupError, PermissionError):
        return False


def reap(child: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """Collect our own child's exit status (so it leaves no zombie); its return code, None if still running."""
    if child is None:
        return None
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@dataclass
class StopOutcome:
    forced: bool  # SIGKILL was needed
    waited_s: float
    was_busy: bool  # it reported saving at some point while we waited


def stop_process(pid: int | None, pgid: int | None = None, *, started: float | None = None,
                 child: subprocess.Popen | None = None, grace_s: float | None = None,
                 ceiling_s: float | None = None, busy: Callable[[], bool] | None = None,
                 sig: int = signal.SIGTERM) -> StopOutcome:
    """Ask a process (or its group) to end, wait as described above, force it if needed, reap it."""
    grace = stop_grace_s() if grace_s is None else grace_s
    ceiling = max(stop_ceiling_s() if ceiling_s is None else ceiling_s, grace)
    t0 = time.monotonic()
    was_busy = False

    def gone() -> bool:
        if child is not None:
            return child.poll() is not None
        return not process_alive(pid, started)

    if not gone():
        send(pid, pgid, sig)
    last_busy = t0  # a save that ends restarts the grace: the worker still writes its end and exits
    while not gone():
        now = time.monotonic()
        if now - t0 >= ceiling:
            break
        saving = bool(busy and busy())
        if saving:
            was_busy, last_busy = True, now
        elif now - last_busy >= grace:
            break
        time.sleep(POLL_S)
    forced = False
    if not gone():
        forced = send(pid, pgid, signal.SIGKILL)
    if pgid and group_alive(pgid):  # the leader has ended; helpers it started may not have
        forced = send(None, pgid, signal.SIGKILL) or forced
    reap(child)
    return StopOutcome(forced, round(time.monotonic() - t0, 2), was_busy)
