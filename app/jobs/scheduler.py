"""The thread that drives the queue: a queued run starts when the one before it ends, whether or not a
browser is watching.

The web studio starts one (`JobManager.start_scheduler()`); `ftstudio runs watch` runs the same loop in
the foreground. Each pass is `manager.refresh()`: reap finished workers, mark dead ones failed, start
the next queued run. The manager also wakes the loop at once when a worker it spawned exits, so a crash
shows as `failed` without waiting for the next pass.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("ftstudio.scheduler")

DEFAULT_INTERVAL_S = 2.0


def interval_s() -> float:
    try:
        value = float(os.environ.get("FTSTUDIO_SCHEDULER_S", ""))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


class Scheduler:
    def __init__(self, refresh: Callable[[], None], interval: float | None = None):
        self._refresh = refresh
        self.interval = interval or interval_s()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Scheduler:
        if not self.running:
            self._stopped.clear()
            self._thread = threading.Thread(target=self._loop, name="ftstudio-scheduler", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Run a pass now (a worker ended, a run was queued)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - a bad run folder must not end the queue for the others
                log.exception("scheduler pass failed")
            self.passes += 1
            self._wake.wait(self.interval)
            self._wake.clear()
