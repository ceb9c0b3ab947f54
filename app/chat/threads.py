"""The studio process's OpenMP wait policy: passive, because its chats share the CPU with its training runs.

The training worker asks for passive waiting when other processes already keep the CPU busy
(app/train/threads.py): a spinning OpenMP thread steals the time slice its partner needs. The studio
process is the other side of that same rule, known in advance: it starts training runs and chats next
to them, so its engine waits passively. Measured on 2 cores (FIELD-NOTES): a chat next to a training run
answered at 0.5-0.8 tokens/s with spinning threads and 7.2-7.5 tokens/s with passive ones.

libgomp reads the variable once, when torch loads it; it is removed again right after, so the training
workers the studio starts still make their own choice. A user's own OMP_WAIT_POLICY always wins.
"""

from __future__ import annotations

import os
import sys


def studio_thread_policy() -> str:
    if "OMP_WAIT_POLICY" in os.environ:
        return f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} (set by the user)"
    if "torch" in sys.modules:
        return "OpenMP wait policy left as is (torch already loaded)"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import torch  # noqa: F401 - loads libgomp, which reads the policy now
    finally:
        del os.environ["OMP_WAIT_POLICY"]  # not inherited by the workers the studio starts
    return "OpenMP threads wait passively (the studio chats next to its training runs)"
