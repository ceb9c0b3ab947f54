"""How torch's OpenMP threads wait between parallel regions: decided before torch loads.

libgomp's default lets idle threads spin. On an idle machine that is the fastest choice, but when
other processes keep the cores busy a spinning thread steals the time slice its partner needs, and a
CPU training step gets several times slower. Measured on 2 cores (SFT LoRA, SmolLM2-135M, batch 4):

    machine                          spin (default)   OMP_WAIT_POLICY=PASSIVE
    idle                             162-166 tok/s    104-115 tok/s
    two other busy processes           6 tok/s         39 tok/s

So the worker samples the CPU use of other processes for a moment at start, and asks for PASSIVE
waiting only when they already use at least half a core. The variable must be set before torch loads
OpenMP (it is read once); a user's own OMP_WAIT_POLICY always wins.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger(__name__)

BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which passive waiting pays off
SAMPLE_S = 0.3


def other_processes_cpu(sample_s: float = SAMPLE_S) -> float:
    """Cores kept busy by other processes over a short sample (this process sleeps meanwhile)."""
    import psutil

    before, own_before = psutil.cpu_times(), psutil.Process().cpu_times()
    time.sleep(sample_s)
    after, own_after = psutil.cpu_times(), psutil.Process().cpu_times()
    idle = lambda t: t.idle + getattr(t, "iowait", 0.0)  # noqa: E731
    busy = (sum(after) - idle(after)) - (sum(before) - idle(before))
    own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    # clock ticks are 10 ms: over a short sample the difference can overshoot the machine's cores
    return min(max(busy - own, 0.0) / sample_s, float(os.cpu_count() or 1))


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
