"""How torch's OpenMP threads wait between parallel regions: decided before torch loads.

libgomp's default lets idle threads spin. On an idle machine that is the fastest choice, but when
other processes keep the cores busy a spinning thread steals the time slice its partner needs, and a
CPU training step gets several times slower. Measured on 2 cores (SFT LoRA, SmolLM2-135M, batch 4):

    machine                          spin (default)   OMP_WAIT_POLICY=PASSIVE
    idle                             162-166 tok/s    104-115 tok/s
    two other busy processes           6 tok/s         39 tok/s

So the worker samples the CPU use of other processes for a moment at start, and asks for PASSIVE
waiting only when they use at least half a core. A burst is not a busy machine: started from the
browser, a worker used to see the studio and the browser answering the Start click (1.2-1.5 cores for
a second) and wait passively, 94-98 tokens/s where a worker started from the CLI spun at 135-162
(`make bench-ui`). So the reading is the least of
- three short samples at the worker's start (work that lasts, such as another job or a chat
  generating, shows in each), and
- when the studio started the worker, the machine's load over the ~10 s before the click, which the
  studio keeps (`LoadWindow`, sampled by its scheduler) and passes in FTSTUDIO_MACHINE_LOAD.
The variable must be set before torch loads OpenMP (it is read once); a user's own OMP_WAIT_POLICY
always wins.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque

log = logging.getLogger(__name__)

BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which passive waiting pays off
SAMPLE_S = 0.2
SAMPLES = 3
LOAD_ENV = "FTSTUDIO_MACHINE_LOAD"  # cores busy before the studio started this worker (LoadWindow)
WINDOW_S = 10.0  # how far back the studio's reading looks
MIN_WINDOW_S = 3.0  # a shorter history says nothing the worker's own samples do not


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def other_processes_cpu(sample_s: float = SAMPLE_S, samples: int = SAMPLES) -> float:
    """Cores kept busy by other processes: the least of `samples` short samples (this process sleeps
    meanwhile)."""
    import psutil

    me = psutil.Process()
    readings = []
    for _ in range(max(1, samples)):
        before, own_before = busy_cpu_seconds(), me.cpu_times()
        time.sleep(sample_s)
        after, own_after = busy_cpu_seconds(), me.cpu_times()
        own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
        readings.append(max(after - before - own, 0.0) / sample_s)
    # clock ticks are 10 ms: over a short sample the difference can overshoot the machine's cores
    return min(min(readings), float(os.cpu_count() or 1))


class LoadWindow:
    """The machine's load over the last WINDOW_S seconds, kept by the studio (its scheduler calls `sample`
    every pass) and handed to the workers it starts (`env`)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def sample(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, busy_cpu_seconds()))
            while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
                self._samples.popleft()  # keep one sample at least WINDOW_S old

    def cores(self) -> float | None:
        """Busy cores from the oldest kept sample to now; None while the history is under MIN_WINDOW_S."""
        now, busy = time.monotonic(), busy_cpu_seconds()
        with self._lock:
            old = next(((t, b) for t, b in self._samples if now - t <= WINDOW_S + MIN_WINDOW_S), None)
        if old is None or now - old[0] < MIN_WINDOW_S:
            return None
        return min(max(busy - old[1], 0.0) / (now - old[0]), float(os.cpu_count() or 1))

    def env(self) -> dict[str, str]:
        """{LOAD_ENV: cores} for a worker's environment, or {} without enough history."""
        cores = self.cores()
        return {} if cores is None else {LOAD_ENV: f"{cores:.2f}"}


def studio_reading() -> float | None:
    """The load the studio measured before it started this worker (LOAD_ENV), if it passed one."""
    try:
        return float(os.environ[LOAD_ENV])
    except (KeyError, ValueError):
        return None


def choose_omp_wait_policy() -> str:
    """Set OMP_WAIT_POLICY=PASSIVE when the machine is already busy; returns what applies and why."""
    if "OMP_WAIT_POLICY" in os.environ:
        return f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} (set by the user)"
    if "torch" in sys.modules:
        return "OpenMP wait policy left as is (torch already loaded)"
    try:
        others = other_processes_cpu()
    except Exception as exc:  # noqa: BLE001 - a probe, never a reason to fail a run
        return f"OpenMP wait policy left as is ({type(exc).__name__})"
    before = studio_reading()
    said = f"other processes use {others:.1f} cores"
    if before is not None:
        said += f", {before:.1f} over the {WINDOW_S:.0f} s before the studio started this run"
        others = min(others, before)
    if others >= BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return f"{said}: OpenMP threads wait passively"
    return f"{said}: OpenMP threads spin (fastest on an idle machine)"
