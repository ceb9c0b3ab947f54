"""How torch's OpenMP threads wait between parallel regions: decided before torch loads.

libgomp's default lets idle threads spin. On an idle machine that is the fastest choice, but when
other processes keep the cores busy a spinning thread steals the time slice its partner needs, and a
CPU training step gets several times slower. Measured on 2 cores (SFT LoRA, SmolLM2-135M, batch 4):

    machine                          spin (default)   OMP_WAIT_POLICY=PASSIVE
    idle                             162-166 tok/s    104-115 tok/s
    two other busy processes           6 tok/s         39 tok/s

So the worker samples the CPU use of other processes for a moment at start (the least of three short
samples, without the process that started it: a burst, such as the studio and the browser answering
the Start click, is not a busy machine), and asks for PASSIVE waiting only when they already use at
least half a core. The variable must be set before torch loads
OpenMP (it is read once); a user's own OMP_WAIT_POLICY always wins.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger(__name__)

BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which passive waiting pays off
SAMPLE_S = 0.2
SAMPLES = 3


def other_processes_cpu(sample_s: float = SAMPLE_S, samples: int = SAMPLES) -> float:
    """Cores kept busy by other processes: the least of `samples` short samples (this process sleeps
    meanwhile), not counting the process that started this one.

    Started from the studio, a worker used to see the studio answering the Start click and the browser
    redrawing the page (1.5 cores for that moment) and chose passive waiting: measured with
    `make bench-ui`, 94 tokens/s against 135-162 from the CLI on an idle machine. Work that lasts (another
    job) shows in every sample; a burst does not."""
    import psutil

    me = psutil.Process()
    parent = me.parent()
    readings = []
    for _ in range(max(1, samples)):
        before, own_before, parent_before = psutil.cpu_times(), _cpu(me), _cpu(parent)
        time.sleep(sample_s)
        after, own_after, parent_after = psutil.cpu_times(), _cpu(me), _cpu(parent)
        idle = lambda t: t.idle + getattr(t, "iowait", 0.0)  # noqa: E731
        busy = (sum(after) - idle(after)) - (sum(before) - idle(before))
        mine = (own_after - own_before) + (parent_after - parent_before)
        readings.append(max(busy - mine, 0.0) / sample_s)
    # clock ticks are 10 ms: over a short sample the difference can overshoot the machine's cores
    return min(min(readings), float(os.cpu_count() or 1))


def _cpu(process) -> float:
    """User + system CPU seconds of a process (0 for none, or one that ended)."""
    import psutil

    try:
        times = process.cpu_times() if process is not None else None
    except psutil.Error:
        return 0.0
    return 0.0 if times is None else times.user + times.system


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
    if others >= BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return f"other processes use {others:.1f} cores: OpenMP threads wait passively"
    return f"other processes use {others:.1f} cores: OpenMP threads spin (fastest on an idle machine)"
